"""The media samples become, at the bottom of the import graph: images as uint8, audio as
``Waveforms``. Data modules (``decode``), metrics and callbacks all import these from here, so
none of them needs another's package (docs/architecture.md, "Media").

Shape legend: B batch, C channels, H/W spatial, T time (audio frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, H, W) uint8, quantised as real 8-bit images are."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclass(frozen=True)
class Waveforms:
    """The audio medium: B mono clips of equal length at one sample rate.

    Args:
        samples: (B, T) float waveforms in [-1, 1].
        sample_rate: Frames per second (Hz).
    """

    samples: Tensor
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 2:
            raise ValueError(f"Waveforms.samples must be (B, T), got shape {tuple(self.samples.shape)}")
        if int(self.sample_rate) <= 0:
            raise ValueError(f"Waveforms.sample_rate must be positive, got {self.sample_rate}")

    def __len__(self) -> int:
        return self.samples.shape[0]

    def numpy(self) -> np.ndarray:
        """(B, T) float32 on the CPU, clipped to [-1, 1]."""
        return self.samples.detach().float().cpu().clamp(-1, 1).numpy()
