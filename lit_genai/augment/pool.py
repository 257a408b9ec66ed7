"""The synthetic pool: class-balanced samples of a class-conditional checkpoint, drawn once and cached.

Sample i is ``lit_genai.api.generate``'s sample i: generator ``seed + i`` and label ``i % K``, what
``lit-genai predict`` writes as ``sample_<i>``. It depends on (seed, i) only, so a pool of N images
is the first N of any longer one: the cache (a ``.pt`` file) grows by the missing tail, is written
after every batch (an interrupted run goes on where it stopped), and a sweep draws its subsets from
one pool (``lit_genai.augment.sweep``).

Shape legend: N images in the pool, K classes, C/H/W image. Pool images are uint8 in [0, 255].
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_genai.atomic import atomic_file
from lit_genai.errors import ConfigError


def pool_identity(module: Any, seed: int, options: Mapping[str, Any]) -> str:
    """What decides the pool's images, as a JSON string: the checkpoint file (path, size, modification
    time), the seed and the sampling settings used."""
    path = Path(getattr(module, "checkpoint_path", "") or "")
    stat = path.stat() if path.is_file() else None
    return json.dumps(
        {
            "checkpoint": str(path.resolve()) if stat else type(module).__name__,
            "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None,
            "seed": seed,
            "sampling": module.sampling_settings(**options),
        },
        sort_keys=True,
        default=str,
    )


def synthetic_pool(
    module: Any,
    per_class: int,
    path: Path,
    *,
    seed: int = 0,
    batch_size: int = 250,
    options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each of the module's K classes: uint8 images (N, C, H, W) and labels
    (N,), N = per_class * K, from the cache at ``path`` where it holds them.

    Args:
        module: A class-conditional image module (``lit_genai.api.load`` gives one).
        per_class: Samples per class.
        path: The cache (``.pt``); made or extended here.
        seed: Sample i draws from ``torch.Generator().manual_seed(seed + i)``.
        batch_size: Samples per ``generate`` call (and per cache write).
        options: Sampling settings (``module.sampling``'s names), e.g. ``{"steps": 10}``.
        log: Where progress lines go.
    """
    from lit_genai.api import generate  # the api imports every paradigm: only when a pool is drawn

    options = dict(options or {})
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    if num_classes < 2 or getattr(module, "modality", None) != "image":
        raise ConfigError(
            f"{getattr(module, 'checkpoint_path', type(module).__name__)}: augment needs a "
            f"class-conditional image model; this one has modality {getattr(module, 'modality', None)} "
            f"and num_classes {num_classes}"
        )
    identity = pool_identity(module, seed, options)
    n = per_class * num_classes
    images = _read(path, identity)  # (N0, C, H, W) uint8; N0 = 0 without a usable cache
    began, have = time.monotonic(), len(images)
    parts = [images] if have else []
    for start in range(have, n, batch_size):
        count = min(batch_size, n - start)
        parts.append(generate(module, count, seed=seed, start=start, **options))  # labels i % K
        images = torch.cat(parts)
        parts = [images]
        with atomic_file(path) as file:  # a killed run keeps every batch written so far
            torch.save({"identity": identity, "images": images}, file)
        if (len(images) * 10 // n) > ((len(images) - count) * 10 // n):  # every tenth of the pool
            log(f"  pool {path.name}: {len(images)}/{n} images ({time.monotonic() - began:.0f} s)")
    labels = torch.arange(n) % num_classes  # (N,), generate's label for sample i
    return images[:n], labels


def _read(path: Path, identity: str) -> Tensor:
    """The cached images when the cache was drawn the same way, else an empty (0,) uint8 tensor."""
    if not path.is_file():
        return torch.zeros(0, dtype=torch.uint8)
    cached = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(cached, dict) or cached.get("identity") != identity:
        return torch.zeros(0, dtype=torch.uint8)  # another checkpoint, seed or sampler: drawn anew
    return cached["images"]
