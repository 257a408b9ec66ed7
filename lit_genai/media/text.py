"""The text medium and its route: lists of strings to W&B tables, TensorBoard text and ``.txt`` files.

Samples are shown exactly as decoded: TensorBoard gets each as an indented markdown code block (so
markdown characters show as they are), W&B a table with one row per sample, files hold the string
byte for byte in UTF-8.

Shape legend: B batch (strings per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lit_genai.media.route import Route


def _markdown(texts: Sequence[str], names: Sequence[str], caption: Optional[str]) -> str:
    """Texts as markdown for TensorBoard: each an indented code block, so its characters show as they are."""
    blocks = [f"**{caption}**"] if caption else []
    for name, text in zip(names, texts, strict=True):
        body = "\n".join("    " + line for line in text.split("\n"))
        blocks.append(f"{name}\n\n{body}")
    return "\n\n".join(blocks)


def log_text(trainer: pl.Trainer, key: str, texts: Sequence[str], caption: Optional[str] = None) -> None:
    """Send strings to every logger that can show text (W&B: a table with one row per sample)."""
    names = [f"sample {i}" for i in range(len(texts))]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            rows = [[i, text] for i, text in enumerate(texts)]
            logger.log_table(key=key, columns=["sample", "text"], data=rows, step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, _markdown(texts, names, caption), global_step=trainer.global_step)


def write_text(folder: Path, names: Sequence[str], texts: Sequence[str]) -> list[Path]:
    """One UTF-8 ``<name>.txt`` holding exactly each string; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in zip(names, texts, strict=True):
        path = folder / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def write_text_listing(path: Path, names: Sequence[str], texts: Sequence[str]) -> Path:
    """All strings in one file, each under a ``==> name <==`` line (as ``head`` shows several files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = [f"==> {name} <==\n{text}\n" for name, text in zip(names, texts, strict=True)]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


class TextRoute(Route[list[str]]):
    """Text: a W&B table and TensorBoard text, ``<name>.txt`` per sample, a listing ``<stem>.txt``."""

    modality = "text"
    medium = "list[str]"
    summary = "samples"

    def is_medium(self, media: Any) -> bool:
        return isinstance(media, list) and all(isinstance(s, str) for s in media)

    def log(
        self,
        trainer: pl.Trainer,
        key: str,
        media: list[str],
        caption: Optional[str] = None,
        nrow: Optional[int] = None,
    ) -> None:
        log_text(trainer, key, media, caption=caption)

    def write(self, folder: Path, names: Sequence[str], media: list[str]) -> list[Path]:
        return write_text(folder, names, media)

    def write_all(
        self, stem: Path, names: Sequence[str], media: list[str], nrow: Optional[int] = None
    ) -> Path:
        return write_text_listing(stem.with_name(f"{stem.name}.txt"), names, media)

    def join(self, batches: Sequence[list[str]]) -> list[str]:
        return [text for batch in batches for text in batch]
