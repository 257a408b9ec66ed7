"""Denoising diffusion: schedules, losses and samplers (pure), the frozen first stage of latent
diffusion, and the LightningModules: ``Diffusion`` (DDPM/DDIM and ODE solvers over a discrete VP
schedule), ``EDM`` (Karras et al. 2022 preconditioning) and ``FlowMatching`` (rectified flow)."""

from lit_genai.diffusion.edm import EDM
from lit_genai.diffusion.flow import FlowMatching
from lit_genai.diffusion.module import Diffusion

__all__ = ["Diffusion", "EDM", "FlowMatching"]
