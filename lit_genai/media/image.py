"""The image medium and its route: (B, C, H, W) uint8 to W&B, TensorBoard and PNG files.

Images leave a model as uint8, quantised as real 8-bit images are (``to_uint8``), so metrics and
files see what a viewer sees. The loggers get one grid per call (``torchvision.utils.make_grid``);
``write`` saves one ``<name>.png`` per sample and ``write_all`` one grid ``<stem>.png``.

Shape legend: B batch, C channels, H/W spatial, H'/W' grid.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lit_genai.media.route import Route


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, H, W) uint8, quantised as real 8-bit images are."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(B, C, H, W) uint8 -> (3, H', W') uint8 grid, ``nrow`` images per row (default: square)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    return make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8


def log_images(
    trainer: pl.Trainer, key: str, images: Tensor, caption: Optional[str] = None, nrow: Optional[int] = None
) -> None:
    """Send (B, C, H, W) uint8 images, as one grid, to every logger that can show images."""
    grid = image_grid(images, nrow)  # (3, H', W')
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(
                key=key,
                images=[grid.permute(1, 2, 0).numpy()],
                step=trainer.global_step,
                caption=[caption or key],
            )
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=trainer.global_step)


def png_bytes(image: Tensor) -> bytes:
    """One (C, H, W) uint8 image as the bytes of its PNG file: what ``write_images`` writes and the
    service (``lit_genai.serve``) returns, so a served sample equals ``predict``'s file byte for byte."""
    buffer = io.BytesIO()
    save_image(image.cpu().float() / 255, buffer, format="png")
    return buffer.getvalue()


def write_images(folder: Path, names: Sequence[str], images: Tensor) -> list[Path]:
    """One ``<name>.png`` per (C, H, W) uint8 image of ``images`` (B, C, H, W); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in zip(names, images.cpu(), strict=True):
        path = folder / f"{name}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths


def write_image_grid(path: Path, images: Tensor, nrow: Optional[int] = None) -> Path:
    """All (B, C, H, W) uint8 images as one PNG grid at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow).float() / 255, path)
    return path


class ImageRoute(Route[Tensor]):
    """Images: a grid to W&B and TensorBoard, ``<name>.png`` per sample, a grid ``<stem>.png``."""

    modality = "image"
    medium = "a uint8 tensor (B, C, H, W)"
    summary = "grid"

    def is_medium(self, media: Any) -> bool:
        return isinstance(media, Tensor) and media.dtype == torch.uint8 and media.ndim == 4

    def undecoded(self, samples: Tensor) -> Tensor:
        # Every image paradigm samples in [-1, 1], the range the data modules normalise to.
        return to_uint8(samples.detach()).cpu()

    def log(
        self,
        trainer: pl.Trainer,
        key: str,
        media: Tensor,
        caption: Optional[str] = None,
        nrow: Optional[int] = None,
    ) -> None:
        log_images(trainer, key, media, caption=caption, nrow=nrow)

    def write(self, folder: Path, names: Sequence[str], media: Tensor) -> list[Path]:
        return write_images(folder, names, media)

    def write_all(self, stem: Path, names: Sequence[str], media: Tensor, nrow: Optional[int] = None) -> Path:
        return write_image_grid(stem.with_name(f"{stem.name}.png"), media, nrow)

    def join(self, batches: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(batches))
