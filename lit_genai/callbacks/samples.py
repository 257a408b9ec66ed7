"""Media out of a model: sample grids during training, sample files from ``predict``.

Modules never log media themselves (DESIGN.md contracts 3 and 7): they expose
``sample(n, cond=..., generator=...)`` and these callbacks route the result to the configured
logger (W&B image, TensorBoard image) and to PNG files in the run folder.

Shape legend: B batch, C channels, H/W spatial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lit_genai.data.images import to_uint8


def run_dir(trainer: pl.Trainer) -> Path:
    """The experiment's folder: ``trainer.default_root_dir`` (set per experiment by the CLI)."""
    return Path(trainer.default_root_dir)


def image_grid(images: Tensor, nrow: Optional[int] = None) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (3, H', W') uint8 grid, ``nrow`` images per row (default: square)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(
        images.float().cpu().clamp(-1, 1), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1)
    )
    return (grid * 255).round().to(torch.uint8)  # (3, H', W')


def log_image(trainer: pl.Trainer, key: str, grid: Tensor, caption: Optional[str] = None) -> None:
    """Send a (3, H, W) uint8 image to every logger that can show images."""
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


def class_labels(n: int, num_classes: int, device: torch.device) -> Optional[Tensor]:
    """(n,) labels cycling through the classes (a grid row per class when n = k * num_classes), or None."""
    return torch.arange(n, device=device) % num_classes if num_classes > 0 else None


class SampleLogger(Callback):
    """Log a grid of samples from fixed seeds every ``every_n_epochs`` validation epochs.

    The grid is drawn with the same generator seed each time, so successive grids show the same
    noise turning into better images. It is drawn inside validation, under EMA weights when the EMA
    callback is on. Files land in ``<run folder>/samples/epoch=NNNN-step=NNNNNN.png``.

    Args:
        every_n_epochs: Draw a grid after every n-th validation epoch (0 turns it off).
        num_samples: Images per grid. For class-conditional models the labels cycle through the
            classes, so a multiple of the number of classes gives one class per column.
        seed: Seed of the generator the samples are drawn with.
        nrow: Images per grid row (default: the number of classes, or a square grid).
    """

    def __init__(
        self, every_n_epochs: int = 1, num_samples: int = 64, seed: int = 0, nrow: Optional[int] = None
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.nrow = nrow
        self.last_path: Optional[Path] = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0 or not hasattr(pl_module, "sample"):
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or _last_validation(trainer):
            self._draw(trainer, pl_module)

    @rank_zero_only
    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "modality", "image") != "image":
            return  # audio and text routes arrive with those paradigms
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = getattr(pl_module, "num_classes", 0)
        cond = class_labels(self.num_samples, num_classes, pl_module.device)
        images = pl_module.sample(self.num_samples, cond=cond, generator=generator)  # (B, C, H, W)
        grid = image_grid(images, self.nrow or (num_classes if num_classes > 0 else None))
        path = (
            run_dir(trainer)
            / "samples"
            / f"epoch={trainer.current_epoch:04d}-step={trainer.global_step:06d}.png"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, path)
        self.last_path = path
        log_image(
            trainer, "samples", grid, caption=f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        )


def _last_validation(trainer: pl.Trainer) -> bool:
    """Whether training stops after this validation (so the final weights always get a grid)."""
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    return (
        trainer.should_stop
        or (max_steps is not None and 0 < max_steps <= trainer.global_step)
        or (max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1)
    )


class SampleWriter(BasePredictionWriter):
    """Write what ``predict`` generates: one PNG per sample plus ``grid.png``.

    Each predict batch is a tensor of sample indices (see the DataModules' ``predict_dataloader``);
    file names carry the index, so a sample's seed can be read off its name.

    Args:
        output_dir: Folder for the files. Default: ``predictions/`` next to the checkpoint's
            ``checkpoints/`` folder when ``--ckpt_path`` is given, else in the run folder.
        grid: Also write all samples as one ``grid.png``.
        nrow: Images per grid row (default: square).
    """

    def __init__(
        self, output_dir: Optional[str] = None, grid: bool = True, nrow: Optional[int] = None
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.grid = grid
        self.nrow = nrow
        self._images: list[Tensor] = []
        self.written: list[Path] = []

    def resolve_dir(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        if trainer.ckpt_path:
            return Path(trainer.ckpt_path).resolve().parent.parent / "predictions"
        return run_dir(trainer) / "predictions"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images, self.written = [], []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if getattr(pl_module, "modality", "image") != "image":
            raise NotImplementedError(
                f"SampleWriter writes images; {pl_module.modality!r} arrives with its paradigm"
            )
        out = self.resolve_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        images = to_uint8(prediction).cpu()  # (B, C, H, W) uint8
        for index, image in zip(batch.tolist(), images, strict=True):
            path = out / f"sample_{index:05d}.png"
            save_image(image.float() / 255, path)
            self.written.append(path)
        self._images.append(images)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._images:
            return
        out = self.resolve_dir(trainer)
        if self.grid and trainer.is_global_zero:
            images = torch.cat(self._images).float() / 127.5 - 1  # (N, C, H, W) back in [-1, 1]
            num_classes = getattr(pl_module, "num_classes", 0)
            nrow = self.nrow or (num_classes if num_classes > 0 else None)
            save_image(image_grid(images, nrow).float() / 255, out / "grid.png")
        rank_zero_info(f"Wrote {len(self.written)} samples and grid.png to {out}")
