"""Source images and masks of image-to-image sampling (SDEdit, inpainting), read from PNG files.

What the sampling settings ``init_image`` and ``mask`` name (docs/architecture.md, "Sampling
settings" and "Conditions"): ``read_images`` turns one PNG or a folder of PNGs into source images
in [-1, 1], the inverse of ``image.to_uint8``, so a sample written by ``predict`` reads back as the
same pixels; ``read_mask`` turns a PNG or a named region into the ``mask`` condition, True where to
fill. A mask PNG marks the pixels to fill in white (value >= 128 in its first channel), the
convention of inpainting tools (RePaint's masks are the inverse: ``invert`` there).

``cycle`` gives sample index i source i % len, as the text prompts do, so ``predict`` draws the
same image for an index whatever the batch.

Shape legend: n images, C channels, H/W spatial.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_genai.errors import ConfigError

NAMED_MASKS = ("left_half", "right_half", "top_half", "bottom_half", "center")
"""Regions ``read_mask`` knows by name: the half to fill, or the centred square of half the side."""

Source = Union[str, Path]


def image_files(path: Source, key: str = "model.sampling.init_image") -> list[Path]:
    """One PNG, or the PNGs of a folder in sorted order; a missing or empty path is one line."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ConfigError(f"{key}={path} is a folder without PNG files: give a .png or a folder of them")
        return files
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist: give a .png file or a folder of .png files")
    return [path]


def read_images(path: Source, shape: Sequence[int], key: str = "model.sampling.init_image") -> Tensor:
    """The PNG(s) at ``path`` as (n, C, H, W) float32 in [-1, 1] (x / 127.5 - 1 of the 8-bit values).

    ``shape`` (C, H, W) is the model's: images are converted to C = 1 (grey) or 3 (RGB) channels; an
    image of another size is one line (resize it first: a silent resize would change what "keep the
    known pixels" means).
    """
    C, H, W = (int(s) for s in shape)
    if C not in (1, 3):
        raise ConfigError(f"{key}: images have {C} channels; PNG sources need 1 (grey) or 3 (RGB)")
    images = []
    for file in image_files(path, key):
        try:
            with Image.open(file) as opened:
                image = np.asarray(opened.convert("L" if C == 1 else "RGB"))
        except OSError as error:
            raise ConfigError(f"{key}: cannot read {file} as an image ({error})") from None
        if image.shape[:2] != (H, W):
            raise ConfigError(
                f"{key}: {file} is {image.shape[1]}x{image.shape[0]} but the model makes {W}x{H} images: "
                "resize it first"
            )
        pixels = torch.from_numpy(image.copy()).reshape(H, W, C).permute(2, 0, 1)  # (C, H, W) uint8
        images.append(pixels.float() / 127.5 - 1.0)
    return torch.stack(images)  # (n, C, H, W)


def named_mask(name: str, size: Sequence[int]) -> Tensor:
    """(1, 1, H, W) bool mask of a named region (``NAMED_MASKS``), True where to fill."""
    H, W = (int(s) for s in size)
    mask = torch.zeros(1, 1, H, W, dtype=torch.bool)
    if name == "left_half":
        mask[..., : W // 2] = True
    elif name == "right_half":
        mask[..., W // 2 :] = True
    elif name == "top_half":
        mask[..., : H // 2, :] = True
    elif name == "bottom_half":
        mask[..., H // 2 :, :] = True
    elif name == "center":
        mask[..., H // 4 : H // 4 + H // 2, W // 4 : W // 4 + W // 2] = True
    else:
        raise ConfigError(
            f"unknown mask {name!r}: give a PNG (white = fill) or one of {', '.join(NAMED_MASKS)}"
        )
    return mask


def read_mask(mask: Source, size: Sequence[int], key: str = "model.sampling.mask") -> Tensor:
    """A named region or the PNG(s) at ``mask`` as (n, 1, H, W) bool, True where to fill (white)."""
    if str(mask) in NAMED_MASKS or (Path(mask).suffix.lower() != ".png" and not Path(mask).exists()):
        return named_mask(str(mask), size)  # an unknown name: one line listing the names
    H, W = (int(s) for s in size)
    masks = []
    for file in image_files(mask, key):
        with Image.open(file) as opened:
            grey = np.asarray(opened.convert("L"))
        if grey.shape != (H, W):
            raise ConfigError(f"{key}: {file} is {grey.shape[1]}x{grey.shape[0]}, the images {W}x{H}")
        masks.append(torch.from_numpy(grey >= 128)[None])  # (1, H, W)
    return torch.stack(masks)  # (n, 1, H, W)


def cycle(rows: Tensor, indices: Sequence[int]) -> Tensor:
    """Row i % len of ``rows`` (n, ...) for each index: (len(indices), ...)."""
    return rows[torch.as_tensor([int(i) % rows.shape[0] for i in indices], dtype=torch.long)]
