"""The VAE family: VAE / beta-VAE / conditional VAE / IWAE (module.py), the VQ-VAE tokenizer
(vqvae.py) and the KL autoencoder of latent diffusion (autoencoder.py); maths in losses.py,
configuration checks in checks.py."""

from lit_genai.vae.autoencoder import KLAutoencoder
from lit_genai.vae.module import VAE, VAESampling
from lit_genai.vae.vqvae import VQVAE

__all__ = ["VAE", "VAESampling", "VQVAE", "KLAutoencoder"]
