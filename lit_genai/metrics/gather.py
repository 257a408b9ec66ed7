"""Gathering every rank's samples under DDP when ranks hold different numbers of them, or none.

``torch.distributed.all_gather`` (and Lightning's ``all_gather``) needs the same shape on every rank:
1,000 samples on 3 ranks are 334 / 334 / 332, and with more ranks than batches a rank holds none, so
a plain gather aborts (gloo) or hangs, and concatenating no batches raises on the empty rank while the
others wait in the collective. ``all_gather_rows`` gathers the row counts first, pads every rank's rows
to the largest count, gathers, and trims (torchmetrics' ``gather_all_tensors``). ``gather_labelled``
turns one rank's (images, labels) batches, possibly none, into the whole world's, for the
Classification Accuracy Score (Ravuri & Vinyals 2019; ``lit_genai.metrics.classifier.cas``), which
every rank trains on the same data. No paper of its own: plumbing.

Both are collective calls under DDP (every rank must call them) and no-ops in a single process.

Shape legend: n_r rows on rank r, N = Σ_r n_r, (...) a row's own shape, C channels, H/W spatial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows, rank 0's first: (n_r, ...) on rank r -> (N, ...) on every rank.

    Args:
        x: This rank's rows; n_r may differ between ranks and may be 0, but every rank must pass the
            same dtype and the same row shape (...).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(gather_all_tensors(x))  # pads to the largest n_r, gathers, trims each rank's part


def gather_labelled(
    batches: Sequence[tuple[Tensor, Tensor]], sample_shape: Sequence[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Every rank's (uint8 images, labels) batches as (N, C, H, W) uint8 and (N,) int64 on ``device``.

    Args:
        batches: This rank's batches of uint8 images (B, C, H, W) and labels (B,); may be empty.
        sample_shape: (C, H, W) of one image, for the (0, C, H, W) tensor an empty rank gathers.
        device: Where to gather (the process group's device: CUDA under NCCL).
    """
    if batches:
        images = torch.cat([images for images, _ in batches]).to(device)  # (n_r, C, H, W)
        labels = torch.cat([labels for _, labels in batches]).to(device, torch.long)  # (n_r,)
    else:  # this rank drew no samples but must still take part in the collective
        images = torch.zeros(0, *sample_shape, dtype=torch.uint8, device=device)
        labels = torch.zeros(0, dtype=torch.long, device=device)
    return all_gather_rows(images), all_gather_rows(labels)
