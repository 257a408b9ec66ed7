"""``export.json``: what an export holds and what a program needs to run alone.

Beside the files of every format, ``export.json`` records the module, the checkpoint, whether the EMA
weights were in, the data's shape and classes, each program's inputs and output (names, shapes with
``"batch"`` for the dynamic dimension, dtypes, value ranges) or each network's file and config, and
``sampler``: the values a sampler written without lit_genai needs (``examples/sample_exported.py``):

- ``Diffusion``: the schedule as the module holds it (``betas``, ``alphas_cumprod``: float32 values,
  so a sampler reproduces ``module.sample``), T, the parameterisation (``eps`` / ``v`` / ``x0``),
  whether x0 is clipped, and the sampling settings;
- ``EDM``: sigma_data, the preconditioning and the network's time input (``preconditioning.py``);
- ``FlowMatching``: the path and the network's time input (``flow_matching.py``);
- ``GAN``, ``VAE``: the latent size and prior; ``KLAutoencoder``: the latent scale; ``VQVAE``: the
  codebook size and token grid; latent models: the first stage's ``decoder`` program and scale;
- the number of classes and the null label (K) of classifier-free guidance, whose rule is
  out = out_u + (1 + w) (out_c - out_u) (Ho & Salimans 2022, eq. 6), both branches in one batch.

Shape legend: T diffusion steps, K classes.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

import lit_genai
from lit_genai.diffusion import EDM, Diffusion, FlowMatching
from lit_genai.diffusion.base import DenoisingModule
from lit_genai.diffusion.flow_matching import NET_TIME_SCALE
from lit_genai.diffusion.preconditioning import TIME_SIGMA_MAX, TIME_SIGMA_MIN
from lit_genai.gan import GAN
from lit_genai.vae import VAE, VQVAE, KLAutoencoder

GUIDANCE = "out_u + (1 + w) * (out_c - out_u), w = guidance_scale; y = null_label gives out_u"


def describe(
    module: LightningModule, format: str, contents: dict[str, Any], *, source: Optional[str] = None
) -> dict[str, Any]:
    """The ``export.json`` document of ``module`` exported in ``format``; ``contents`` its
    ``programs`` or ``networks`` section (``formats.export``)."""
    cls = type(module)
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    document: dict[str, Any] = {
        "format": format,
        "module": f"{cls.__module__}.{cls.__qualname__}",
        "source": source,
        "ema": getattr(module, "ema_loaded", None),  # set by lit_genai.load; None: built in Python
        "lit_genai": lit_genai.__version__,
        "torch": torch.__version__,
        "modality": getattr(module, "modality", "image"),
        "sample_shape": list(getattr(module, "sample_shape", ())) or None,
        "num_classes": num_classes,
        "null_label": num_classes if num_classes > 0 and isinstance(module, DenoisingModule) else None,
        "class_names": list(getattr(module, "class_names", None) or []) or None,
        **_text(module),
        **contents,
        "sampler": sampler(module),
    }
    return document


def _text(module: LightningModule) -> dict[str, Any]:
    """A text-conditional module's tokenizer: the caption words (word i has id i + 1; None: UTF-8
    bytes, byte b has id b + 1), the encoder's max_length; 0 pads. Nothing for other modules."""
    text = getattr(module, "text", None)
    if text is None:
        return {}
    vocabulary = module.hparams.get("text_vocabulary")
    return {
        "text": {
            "tokenizer": "words" if vocabulary is not None else "bytes",
            "vocabulary": list(vocabulary) if vocabulary is not None else None,
            "max_length": int(text.encoder.max_length),
            "words": 'lower case, split on whitespace and , ; : . ! ? ( ) "',
        }
    }


def sampler(module: LightningModule) -> dict[str, Any]:
    """What a sampler needs besides the programs (module docstring)."""
    settings = module.sampling_settings() if callable(getattr(module, "sampling_settings", None)) else {}
    if isinstance(module, Diffusion):
        found = {
            "paradigm": "diffusion",
            "num_timesteps": module.num_timesteps,
            "beta_schedule": module.hparams.beta_schedule,
            "prediction": module.hparams.prediction,
            "time": "t (int64) = the step index in [0, T - 1]; index t is the paper's step t + 1",
            "clip_denoised": bool(module.sampling.clip_denoised and module.first_stage is None),
            "betas": module.betas.double().tolist(),  # (T,) the float32 buffers the module samples with
            "alphas_cumprod": module.alpha_bar.double().tolist(),  # (T,)
        }
    elif isinstance(module, EDM):
        found = {
            "paradigm": "edm",
            "sigma_data": float(module.hparams.sigma_data),
            "time": (
                f"t (float32) = 1000 * ln(sigma / {TIME_SIGMA_MIN}) / ln({TIME_SIGMA_MAX} / {TIME_SIGMA_MIN})"
            ),
            "denoiser": (
                "D(x, sigma) = c_skip x + c_out out(c_in x, t, y); c_skip = sd^2 / (sigma^2 + sd^2), "
                "c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2), sd = sigma_data"
            ),
        }
    elif isinstance(module, FlowMatching):
        found = {
            "paradigm": "flow_matching",
            "time": f"t_net (float32) = {NET_TIME_SCALE:g} t, t in [0, 1]: 0 data, 1 noise",
            "path": "x_t = (1 - t) x0 + t eps; out = the velocity dx_t/dt = eps - x0",
        }
    elif isinstance(module, GAN):
        found = {"paradigm": "gan", "latent_dim": module.latent_dim, "noise": "z ~ N(0, I)"}
    elif isinstance(module, VAE):
        found = {
            "paradigm": "vae",
            "latent_dim": module.latent_dim,
            "noise": "z ~ N(0, temperature^2 I)",
            "likelihood": module.likelihood,
        }
    elif isinstance(module, KLAutoencoder):
        found = {"paradigm": "kl_autoencoder", **_first_stage(module)}
    elif isinstance(module, VQVAE):
        found = {
            "paradigm": "vqvae",
            "vocab_size": module.vocab_size,
            "token_shape": list(module.token_shape),
        }
    elif hasattr(module, "vocab_size"):  # token models: what encodes prompts and decodes the ids
        found = {
            "paradigm": type(module).__name__,
            "vocab_size": module.vocab_size,
            "block_size": module.block_size,
            "vocabulary": getattr(module, "vocabulary", None),
        }
    else:
        found = {"paradigm": type(module).__name__}
    if isinstance(module, DenoisingModule):
        found["guidance"] = GUIDANCE if module.num_classes > 0 else None
        if module.first_stage is not None:
            found["latent"] = {"program": "decoder", **_first_stage(module.first_stage.autoencoder)}
    return {**found, "settings": _plain(settings)}


def _first_stage(autoencoder: KLAutoencoder) -> dict[str, Any]:
    return {
        "latent_shape": list(autoencoder.latent_shape),
        "scale_factor": float(autoencoder.scale_factor),
        "decode": "images = decoder(latents), latents scaled by scale_factor as the denoiser models them",
    }


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as strict JSON: an infinite float (EDM's s_tmax) as the string "inf"."""
    return {k: str(v) if isinstance(v, float) and math.isinf(v) else v for k, v in settings.items()}
