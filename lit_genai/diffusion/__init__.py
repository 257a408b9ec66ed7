"""Denoising diffusion: schedules, losses and samplers (pure) and the LightningModule."""

from lit_genai.diffusion.module import Diffusion

__all__ = ["Diffusion"]
