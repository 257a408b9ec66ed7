"""Generative adversarial networks: losses (pure) and the LightningModule."""

from lit_genai.gan.module import GAN, GANSampling

__all__ = ["GAN", "GANSampling"]
