"""Sliced Wasserstein distance between two image batches: a cheap, generator-only validation score.

Rabin et al. 2011, "Wasserstein Barycenter and its Application to Texture Mixing" (sliced
Wasserstein); Karras et al. 2018 (Progressive GAN) use it on Laplacian-pyramid patches. The GAN
module logs it as ``val/loss``: it does not depend on the discriminator, so a checkpoint monitor on
it does not reward a strong discriminator (a weak generator). A coarse proxy; prefer an FID.

Shape legend: B batch, C/H/W image, D = C·H·W, K slicing directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_directions(dim: int, num: int, generator: torch.Generator) -> Tensor:
    """(D, K) random unit directions (columns) for ``sliced_wasserstein``."""
    return F.normalize(torch.randn(dim, num, generator=generator), dim=0)


def sliced_wasserstein(real: Tensor, fake: Tensor, directions: Tensor) -> Tensor:
    """Mean over unit ``directions`` (D, K) of the 1-D Wasserstein-1 distance between the projections.

    For equal batch sizes that 1-D distance is the mean absolute difference of the sorted
    projections. real, fake: (B, C, H, W) -> scalar.
    """
    proj_real = (real.flatten(1).float() @ directions).sort(dim=0).values  # (B, K)
    proj_fake = (fake.flatten(1).float() @ directions).sort(dim=0).values  # (B, K)
    return (proj_real - proj_fake).abs().mean()
