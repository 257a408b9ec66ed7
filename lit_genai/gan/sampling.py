"""Sampling-time maths of GANs (pure): the truncation trick.

Paper: Brock et al. 2019 ("Large Scale GAN Training for High Fidelity Natural Image Synthesis",
sec. 3.1): sampling z from a truncated normal, values outside [-t, t] resampled, trades variety for
fidelity as t shrinks.

Shape legend: B batch, Z latent_dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_genai.errors import ConfigError


def truncate(z: Tensor, truncation: float) -> Tensor:
    """Map standard normal draws z (B, Z) to draws of the normal truncated to [-t, t], t = ``truncation``.

    Instead of resampling values outside [-t, t] (BigGAN's code), each coordinate goes through the
    inverse-CDF map u = Phi(z), z' = Phi^-1(Phi(-t) + u (Phi(t) - Phi(-t))): the same distribution,
    with no extra random draws, so a sample still depends on its own generator only.
    """
    if not truncation > 0:
        raise ConfigError(f"truncation={truncation}: give a positive bound (None turns truncation off)")
    t = torch.tensor(float(truncation), dtype=torch.float64)
    low, high = torch.special.ndtr(-t), torch.special.ndtr(t)
    u = torch.special.ndtr(z.double())  # (B, Z) in (0, 1)
    return torch.special.ndtri(low + u * (high - low)).to(z.dtype)  # (B, Z) in [-t, t]
