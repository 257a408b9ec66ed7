"""Media out of a model: sample grids during training, sample files from ``predict``.

Modules never log media themselves (``docs/architecture.md``, "Generative modules" and "Media"):
they keep the contract of ``lit_genai.paradigm`` (``sample``, ``modality``, ``num_classes``), the
data module's ``decode`` turns samples into their medium, and these callbacks send the medium down
its route, ``lit_genai.media.ROUTES[module.modality]``: images, text or audio to the configured
loggers (W&B, TensorBoard) and to files in the run folder. They never branch on the modality: what
differs per medium (grid, listing or folder of clips) is the route's.

Shape legend: B batch, C channels, H/W spatial, T time or tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from lit_genai import media, paradigm
from lit_genai.callbacks.epochs import should_draw


def run_dir(trainer: pl.Trainer) -> Path:
    """The experiment's folder: ``trainer.default_root_dir`` (set per experiment by the CLI)."""
    return Path(trainer.default_root_dir)


def class_labels(n: int, num_classes: int, device: torch.device) -> Optional[Tensor]:
    """(n,) labels cycling through the classes (a grid row per class when n = k * num_classes), or None."""
    return torch.arange(n, device=device) % num_classes if num_classes > 0 else None


def grid_rows(nrow: Optional[int], num_classes: int) -> Optional[int]:
    """Images per grid row: ``nrow`` if set, else one column per class (the labels cycle), else None
    (a square grid)."""
    return nrow or (num_classes if num_classes > 0 else None)


class SampleLogger(Callback):
    """Log samples from fixed seeds every ``every_n_epochs`` validation epochs.

    The samples are drawn with the same generator seed each time, so successive draws show the same
    noise turning into better samples. They are drawn inside validation, under EMA weights when the
    EMA callback is on, and go to the loggers and to ``<run folder>/samples/``, by modality:
    images as one grid ``epoch=NNNN-step=NNNNNN.png``, text as one listing
    ``epoch=NNNN-step=NNNNNN.txt``, audio as a folder ``epoch=NNNN-step=NNNNNN/`` with a WAV and a
    spectrogram PNG per clip.

    Args:
        every_n_epochs: Draw samples after every n-th validation epoch (0 turns it off).
        num_samples: Samples per draw. For class-conditional models the labels cycle through the
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
        if paradigm.is_generative(pl_module) and should_draw(trainer, self.every_n_epochs):
            self._draw(trainer, pl_module)

    @rank_zero_only
    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = getattr(pl_module, "num_classes", 0)
        cond = class_labels(self.num_samples, num_classes, pl_module.device)
        samples = pl_module.sample(self.num_samples, cond=cond, generator=generator)
        decoded = media.to_media(trainer.datamodule, pl_module.modality, samples)
        route = media.ROUTES[pl_module.modality]
        stamp = f"epoch={trainer.current_epoch:04d}-step={trainer.global_step:06d}"
        caption = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        nrow = grid_rows(self.nrow, num_classes)
        names = media.sample_names(range(len(decoded)))
        self.last_path = route.write_all(run_dir(trainer) / "samples" / stamp, names, decoded, nrow)
        route.log(trainer, "samples", decoded, caption=caption, nrow=nrow)


class SampleWriter(BasePredictionWriter):
    """Write what ``predict`` generates, one file per sample named after its index.

    Each predict batch is a tensor of sample indices (see the DataModules' ``predict_dataloader``);
    sample i is drawn from seed + i, so a file's name says how to redraw it alone. By modality:
    images ``sample_00003.png`` (plus ``grid.png``), text ``sample_00003.txt`` (plus one
    ``samples.txt`` listing), audio ``sample_00003.wav`` (16-bit PCM) and a ``sample_00003.png``
    spectrogram.

    Args:
        output_dir: Folder for the files. Default: ``predictions/`` next to the checkpoint's
            ``checkpoints/`` folder when ``--ckpt_path`` is given, else in the run folder.
        grid: Also write all samples as one file: ``grid.png`` for images, ``samples.txt`` for text.
        nrow: Images per grid row (default: square).
    """

    def __init__(
        self, output_dir: Optional[str] = None, grid: bool = True, nrow: Optional[int] = None
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.grid = grid
        self.nrow = nrow
        self._media: list[Any] = []  # per batch, for routes with a summary file (not audio)
        self._names: list[str] = []
        self.written: list[Path] = []

    def resolve_dir(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        if trainer.ckpt_path:
            return Path(trainer.ckpt_path).resolve().parent.parent / "predictions"
        return run_dir(trainer) / "predictions"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._media, self._names, self.written = [], [], []

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
        decoded = media.to_media(trainer.datamodule, pl_module.modality, prediction)
        route = media.ROUTES[pl_module.modality]
        names = media.sample_names(batch.tolist())
        self.written.extend(route.write(self.resolve_dir(trainer), names, decoded))
        if route.summary is not None:  # kept for the one summary file at the end
            self._media.append(decoded)
            self._names.extend(names)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.written:
            return
        out = self.resolve_dir(trainer)
        route = media.ROUTES[pl_module.modality]
        summary = ""
        if self.grid and self._media and route.summary is not None and trainer.is_global_zero:
            nrow = grid_rows(self.nrow, getattr(pl_module, "num_classes", 0))
            joined = route.join(self._media)
            summary = route.write_all(out / route.summary, self._names, joined, nrow).name
        rank_zero_info(f"Wrote {len(self.written)} samples{' and ' + summary if summary else ''} to {out}")
