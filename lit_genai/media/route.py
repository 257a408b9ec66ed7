"""The shape of a media route: how one medium leaves a model, to the loggers and to files.

A ``Route`` is one small object per medium (``lit_genai.media.image``, ``.audio``, ``.text``);
``lit_genai.media.ROUTES`` maps each modality to its route, so callers (``SampleLogger``,
``SampleWriter``) pick ``ROUTES[module.modality]`` and never branch on the modality themselves
(docs/architecture.md, "Media").

Shape legend: B batch (the samples of one call).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

import lightning.pytorch as pl
from torch import Tensor

M = TypeVar("M")  # the medium: uint8 image tensor, list[str] or Waveforms


def sample_names(indices: Sequence[int]) -> list[str]:
    """File stems carrying each sample's index: ``sample_00003`` (its seed is seed + index)."""
    return [f"sample_{int(i):05d}" for i in indices]


class Route(ABC, Generic[M]):
    """One medium's destinations: ``log`` to the trainer's loggers, ``write`` one file per sample,
    ``write_all`` one file (or folder) for the lot.

    Attributes:
        modality: The ``module.modality`` this route serves (its key in ``ROUTES``).
        medium: What a data module's ``decode`` must return for it, as messages name it.
        summary: Stem of the one file ``SampleWriter`` writes for all predicted samples
            (``write_all(folder / summary, ...)``); None where the per-sample files already are all
            there is to see (audio), so predicted batches need not be kept.
    """

    modality: str
    medium: str
    summary: Optional[str] = None

    @abstractmethod
    def is_medium(self, media: Any) -> bool:
        """Whether ``media`` is this medium (a data module's ``decode`` returned the right thing)."""

    def undecoded(self, samples: Tensor) -> Optional[M]:
        """The medium of raw ``module.sample()`` output when the data module has no ``decode``, or None
        where the medium has no such default (only images have one: samples in [-1, 1])."""
        return None

    @abstractmethod
    def log(
        self,
        trainer: pl.Trainer,
        key: str,
        media: M,
        caption: Optional[str] = None,
        nrow: Optional[int] = None,
    ) -> None:
        """Send ``media`` under ``key`` to every logger of ``trainer`` that can show it (W&B,
        TensorBoard; other loggers only get the files).

        Args:
            trainer: Its ``loggers`` and ``global_step`` are used.
            key: The logger's name for the media (``samples``, ``latents/reconstructions``).
            media: B samples of this medium.
            caption: Shown with the media where the logger has captions.
            nrow: Images per grid row (a layout hint; media without a grid ignore it).
        """

    @abstractmethod
    def write(self, folder: Path, names: Sequence[str], media: M) -> list[Path]:
        """One file per sample, ``<folder>/<name>.<suffix>``; returns the paths (one per sample)."""

    @abstractmethod
    def write_all(self, stem: Path, names: Sequence[str], media: M, nrow: Optional[int] = None) -> Path:
        """All samples at ``stem`` plus the medium's suffix (or a folder ``stem``); returns that path."""

    def join(self, batches: Sequence[M]) -> M:
        """Predicted batches -> one medium (for ``write_all`` at the end of ``predict``)."""
        raise NotImplementedError(f"the {self.modality} route keeps no summary of predicted batches")
