"""Media routes: samples of any modality to the loggers that can show them and to files.

The media contract (``docs/architecture.md``, "Media"):

- the module's ``modality`` (``"image"``, ``"text"`` or ``"audio"``, see ``lit_genai.paradigm``)
  picks the route;
- the data module's ``decode(samples)`` turns ``module.sample()`` output into the medium:

  ========  =============================================  ==========================================
  modality  ``decode`` returns                             routes
  ========  =============================================  ==========================================
  image     uint8 tensor (B, C, H, W)                      W&B image, TensorBoard image, PNG (+ grid)
  text      ``list[str]`` of B strings                     W&B table, TensorBoard text, ``.txt``
  audio     ``Waveforms`` ((B, T) float in [-1, 1], rate)  W&B audio, TensorBoard audio, WAV + PNG
  ========  =============================================  ==========================================

  A data module without ``decode`` is fine for images (``to_uint8`` of samples in [-1, 1]); text
  and audio have no such default, so ``to_media`` raises a ``ConfigError``.

Each (medium, destination) pair is one small function: ``log_images`` / ``log_audio`` /
``log_text`` send a medium to every logger of the trainer that can show it (W&B, TensorBoard;
CSV and other loggers only get the files), ``write_images`` / ``write_audio`` / ``write_text``
write one file per sample named ``<name>.png`` / ``<name>.wav`` (+ ``<name>.png`` spectrogram) /
``<name>.txt``, and ``write_image_grid`` / ``write_text_listing`` write one file for the lot.
Paradigms only make ``sample`` and ``decode`` right; ``SampleLogger`` and ``SampleWriter``
(``lit_genai.callbacks.samples``) call these routes.

Shape legend: B batch, C channels, H/W spatial, T time (audio frames), F frequency bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import soundfile
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lit_genai.media import Waveforms, to_uint8
from lit_genai.errors import ConfigError


Media = Union[Tensor, list[str], Waveforms]

_MEDIUM = {"image": "a uint8 tensor (B, C, H, W)", "text": "list[str]", "audio": "Waveforms"}


def to_media(datamodule: Any, modality: str, samples: Tensor) -> Media:
    """``module.sample()`` output -> its medium, through ``datamodule.decode`` (see the module docstring)."""
    decode = getattr(datamodule, "decode", None)
    if decode is None:
        if modality == "image":
            return to_uint8(samples.detach()).cpu()
        medium = _MEDIUM.get(modality, "the medium")
        problem = (
            f"the data module {type(datamodule).__name__} has no decode(samples)"
            if datamodule is not None
            else "there is no data module to decode its samples"
        )
        raise ConfigError(
            f"model.modality is {modality!r} but {problem}: use a data module whose decode(samples) "
            f"returns {medium} (docs/architecture.md, Media)"
        )
    media = decode(samples)
    _check_medium(modality, media, len(samples), type(datamodule).__name__)
    return media.cpu() if isinstance(media, Tensor) else media


def _check_medium(modality: str, media: Any, n: int, owner: str) -> None:
    """A data module's ``decode`` returned the medium its modality promises (a bug otherwise)."""
    ok = {
        "image": isinstance(media, Tensor) and media.dtype == torch.uint8 and media.ndim == 4,
        "text": isinstance(media, list) and all(isinstance(s, str) for s in media),
        "audio": isinstance(media, Waveforms),
    }.get(modality, False)
    if not ok or len(media) != n:
        raise TypeError(
            f"{owner}.decode must return {_MEDIUM.get(modality, '?')} of {n} samples for "
            f"modality {modality!r}, got {type(media).__name__}"
        )


def sample_names(indices: Sequence[int]) -> list[str]:
    """File stems carrying each sample's index: ``sample_00003`` (its seed is seed + index)."""
    return [f"sample_{int(i):05d}" for i in indices]


# ---------------------------------------------------------------------- images


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


def write_images(folder: Path, names: Sequence[str], images: Tensor) -> list[Path]:
    """One ``<name>.png`` per (C, H, W) uint8 image of ``images`` (B, C, H, W); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in zip(names, images.cpu(), strict=True):
        path = folder / f"{name}.png"
        save_image(image.float() / 255, path)
        paths.append(path)
    return paths


def write_image_grid(path: Path, images: Tensor, nrow: Optional[int] = None) -> Path:
    """All (B, C, H, W) uint8 images as one PNG grid at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow).float() / 255, path)
    return path


# ---------------------------------------------------------------------- audio


def log_audio(trainer: pl.Trainer, key: str, audio: Waveforms, caption: Optional[str] = None) -> None:
    """Send each clip to every logger that can play audio (TensorBoard: one tag ``<key>/<i>`` per clip)."""
    clips = audio.numpy()  # (B, T)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_audio(
                key=key,
                audios=list(clips),
                step=trainer.global_step,
                sample_rate=[audio.sample_rate] * len(clips),
                caption=[f"{caption or key}, sample {i}" for i in range(len(clips))],
            )
        elif isinstance(logger, TensorBoardLogger):
            for i, clip in enumerate(clips):
                # add_audio takes one (1, T) clip in [-1, 1]
                logger.experiment.add_audio(
                    f"{key}/{i}", clip[None], global_step=trainer.global_step, sample_rate=audio.sample_rate
                )


def spectrogram(wave: Tensor, n_fft: int = 512, width: int = 256) -> Tensor:
    """(T,) waveform -> (F, frames) log-magnitude STFT in dB, F = n_fft // 2 + 1.

    ``n_fft`` shrinks to the clip for short clips; the hop is chosen for about ``width`` frames
    (never more than half a window, so no sample is skipped).
    """
    wave = wave.detach().float().cpu()
    n_fft = max(2, min(n_fft, 2 ** int(math.log2(max(wave.shape[-1], 2)))))
    hop = min(max(1, math.ceil(wave.shape[-1] / width)), n_fft // 2)
    spec = torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (F, frames)
    return 20 * spec.abs().clamp_min(1e-5).log10()


def spectrogram_image(wave: Tensor, top_db: float = 80.0) -> np.ndarray:
    """(T,) waveform -> (F, frames, 3) uint8 RGB picture of its spectrogram, low frequencies at the bottom.

    The top ``top_db`` decibels below the loudest bin are shown (a quiet floor stays black).
    """
    from matplotlib import colormaps  # only the colour map; no figure, no backend

    db = spectrogram(wave)  # (F, frames)
    db = db.clamp_min(db.max() - top_db)
    unit = (db - db.min()) / (db.max() - db.min()).clamp_min(1e-8)  # [0, 1]
    rgba = colormaps["magma"](unit.flip(0).numpy())  # (F, frames, 4) float
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def write_audio(folder: Path, names: Sequence[str], audio: Waveforms) -> list[Path]:
    """``<name>.wav`` (16-bit PCM) and a ``<name>.png`` spectrogram per clip; returns the WAV paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, clip in zip(names, audio.numpy(), strict=True):
        path = folder / f"{name}.wav"
        soundfile.write(path, clip, audio.sample_rate, subtype="PCM_16")
        Image.fromarray(spectrogram_image(torch.from_numpy(clip))).save(folder / f"{name}.png")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- text


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
