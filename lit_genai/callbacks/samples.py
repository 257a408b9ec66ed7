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

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_genai import media, paradigm, sharding
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

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Rank 0 draws, writes and logs. Under a sharded strategy (FSDP, DeepSpeed) every forward pass
        # gathers the parameters from all ranks, so all of them draw the same samples (one seed) and
        # rank 0 alone writes: drawing on rank 0 alone would wait forever for the others.
        if not sharding.draws_here(trainer):
            return
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = getattr(pl_module, "num_classes", 0)
        cond = class_labels(self.num_samples, num_classes, pl_module.device)
        draw = lambda: pl_module.sample(self.num_samples, cond=cond, generator=generator)
        samples = sharding.forward_outside_step(trainer, pl_module, draw)
        if not trainer.is_global_zero:
            return
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
    spectrogram. A text-conditional model's captions go into ``prompts.txt``, one line per file
    (``sample_00003.png<TAB>a small red circle ...``).

    At the start of ``predict`` it deletes the files an earlier ``predict`` wrote in its folder
    (``OWN_FILES``: ``sample_<index>`` files, ``grid.png``, ``samples.txt``; never another file), so
    a smaller predict leaves no stale samples beside its grid. Under DDP every rank writes its own
    samples; rank 0 then gathers every rank's indices (and media, for the grid), counting each index
    once, and writes the grid and the message for them all.

    Args:
        output_dir: Folder for the files. Default: ``predictions/`` in the run folder
            (``trainer.default_root_dir``), whichever run's checkpoint is loaded.
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
        self._indices: list[int] = []  # sample indices this rank drew, in batch order
        self.written: list[Path] = []  # this rank's files (one per sample)
        self.num_samples = 0  # samples written by all ranks, each index once (rank 0, after predict)

    def resolve_dir(self, trainer: pl.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return run_dir(trainer) / "predictions"  # this run's folder, never the checkpoint's

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._media, self._indices, self.written, self.num_samples = [], [], [], 0
        if trainer.is_global_zero:
            out = self.resolve_dir(trainer)
            stale = clear_outputs(out)
            if stale:
                rank_zero_info(f"Deleted {len(stale)} files of an earlier predict in {out}")
        trainer.strategy.barrier("lit_genai_predict_clear")  # no rank writes before they are gone

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
        decoded = paradigm.finished(
            pl_module, media.to_media(trainer.datamodule, pl_module.modality, prediction)
        )
        route = media.ROUTES[pl_module.modality]
        indices = [int(i) for i in batch.tolist()]
        self.written.extend(route.write(self.resolve_dir(trainer), media.sample_names(indices), decoded))
        self._indices.extend(indices)
        if self.grid and route.summary is not None:  # kept for the one summary file at the end
            self._media.append(decoded)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        route = media.ROUTES[pl_module.modality]
        parts = gather_on_rank_zero((self._indices, self._media))  # a collective: every rank calls it
        indices = [i for rank_indices, _ in parts for i in rank_indices]  # rank 0's, then rank 1's, ...
        batches = [batch for _, rank_batches in parts for batch in rank_batches]  # in the same order
        unique = sorted(set(indices))  # a sampler that pads ranks repeats indices: each counts once
        if not trainer.is_global_zero or not unique:
            return
        self.num_samples = len(unique)
        out = self.resolve_dir(trainer)
        summary = ""
        if batches:
            joined = route.join(batches)  # one sample per entry of ``indices``
            first: dict[int, int] = {}  # sample index -> position of its first copy in ``joined``
            for position, index in enumerate(indices):
                first.setdefault(index, position)
            ordered = route.join([joined[first[i] : first[i] + 1] for i in unique])  # by sample index
            nrow = grid_rows(self.nrow, getattr(pl_module, "num_classes", 0))
            summary = route.write_all(out / route.summary, media.sample_names(unique), ordered, nrow).name
        prompts = paradigm.predict_prompts(pl_module, unique)
        if prompts is not None:  # which caption made which file
            suffix = self.written[0].suffix if self.written else ""
            lines = [
                f"{name}{suffix}\t{prompt}"
                for name, prompt in zip(media.sample_names(unique), prompts, strict=True)
            ]
            (out / PROMPTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
            summary = f"{summary} and {PROMPTS}" if summary else PROMPTS
        rank_zero_info(f"Wrote {len(unique)} samples{' and ' + summary if summary else ''} to {out}")


# What ``SampleWriter`` writes into its folder (``media.sample_names`` with the routes' suffixes, and
# the routes' summaries): the files an earlier predict left, which a new one deletes first.
OWN_FILES = re.compile(r"sample_\d{5,}\.(png|txt|wav)|grid\.png|samples\.txt|prompts\.txt")
PROMPTS = "prompts.txt"  # a text-conditional model's captions: one line per file, "<file>\t<caption>"


def clear_outputs(folder: Path) -> list[Path]:
    """Delete the files of an earlier ``predict`` in ``folder`` (names matching ``OWN_FILES``; no
    other file, no subfolder); returns them."""
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if OWN_FILES.fullmatch(p.name) and p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def gather_on_rank_zero(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on global rank 0, in rank order (``[obj]`` in a single process; ``[]`` on
    the other ranks). A collective under DDP: every rank must call it.

    Lightning's ``Strategy.all_gather`` takes tensors of one shape on every rank; here ranks hold
    different numbers of samples, and text samples are strings, so the objects are pickled
    (``torch.distributed.gather_object``).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    rank_zero = dist.get_rank() == 0
    parts: Optional[list[Any]] = [None] * dist.get_world_size() if rank_zero else None
    dist.gather_object(obj, parts, dst=0)
    return parts if parts is not None else []
