"""``random_shift``: the translation augmentation of the domain classifier's trainers.

Random integer translations by up to a few pixels, background-filled: the translation augmentation
of the classic MNIST recipes (no paper of its own). Used by the ``Classifier`` LightningModule and by
the CAS loop (``lit_genai.metrics.classifier.cas``).

Shape legend: B batch, C channels, H/W spatial. Images are float in [-1, 1], background -1.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(
    x: Tensor,
    max_shift: int,
    generator: Optional[torch.Generator] = None,
    fill: Literal["black", "edge"] = "black",
) -> Tensor:
    """Translate each image by its own integer offset in [-max_shift, max_shift]^2, filling with -1
    (``fill="black"``: digits on black) or by repeating the edge pixels (``"edge"``: pictures on a
    coloured background, the attribute classifier's).

    Args:
        x: Images (B, C, H, W) in [-1, 1].
        max_shift: Largest offset in pixels along each axis.
        generator: A CPU generator that makes the offsets reproducible; None = the global RNG.

    Returns:
        The shifted images (B, C, H, W).
    """
    B, C, H, W = x.shape
    s = max_shift
    if fill == "edge":
        padded = F.pad(x, (s, s, s, s), mode="replicate")  # (B, C, H + 2s, W + 2s)
    else:
        padded = F.pad(x, (s, s, s, s), value=-1.0)  # (B, C, H + 2s, W + 2s), background is -1
    dy, dx = torch.randint(0, 2 * s + 1, (2, B, 1), generator=generator).to(x.device)  # (B, 1) each
    rows = dy + torch.arange(H, device=x.device)  # (B, H)
    cols = dx + torch.arange(W, device=x.device)  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    channel = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
