"""Denoising diffusion: schedules, losses and samplers (pure), the frozen first stage of latent
diffusion, and the LightningModules: ``Diffusion`` (DDPM/DDIM and ODE solvers over a discrete VP
schedule), ``EDM`` (Karras et al. 2022 preconditioning) and ``FlowMatching`` (rectified flow), each
with its sampling settings."""

from lit_genai.diffusion.edm import EDM, EDMSampling
from lit_genai.diffusion.flow import FlowMatching, FlowSampling
from lit_genai.diffusion.module import Diffusion, DiffusionSampling

__all__ = ["Diffusion", "DiffusionSampling", "EDM", "EDMSampling", "FlowMatching", "FlowSampling"]
