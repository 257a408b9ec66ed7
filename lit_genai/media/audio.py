"""The audio medium and its route: ``Waveforms`` to W&B, TensorBoard, WAV files and spectrograms.

A clip is played by the loggers that can play audio (W&B, TensorBoard: one tag ``<key>/<i>`` per
clip), written as 16-bit PCM ``<name>.wav`` and pictured as a ``<name>.png`` log-magnitude STFT
(a spectrogram shows at a glance what listening to dozens of clips would).

Shape legend: B batch, T time (audio frames), F frequency bins.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import soundfile
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor

from lit_genai.media.route import Route


@dataclass(frozen=True)
class Waveforms:
    """The audio medium: B mono clips of equal length at one sample rate.

    Args:
        samples: (B, T) float waveforms in [-1, 1].
        sample_rate: Frames per second (Hz).
    """

    samples: Tensor
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 2:
            raise ValueError(f"Waveforms.samples must be (B, T), got shape {tuple(self.samples.shape)}")
        if int(self.sample_rate) <= 0:
            raise ValueError(f"Waveforms.sample_rate must be positive, got {self.sample_rate}")

    def __len__(self) -> int:
        return self.samples.shape[0]

    def numpy(self) -> np.ndarray:
        """(B, T) float32 on the CPU, clipped to [-1, 1]."""
        return self.samples.detach().float().cpu().clamp(-1, 1).numpy()


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


def wav_bytes(clip: np.ndarray, sample_rate: int) -> bytes:
    """One (T,) float clip in [-1, 1] as the bytes of its 16-bit PCM WAV file: what ``write_audio``
    writes and the service (``lit_genai.serve``) returns, so both are the same bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, int(sample_rate), subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_audio(folder: Path, names: Sequence[str], audio: Waveforms) -> list[Path]:
    """``<name>.wav`` (16-bit PCM) and a ``<name>.png`` spectrogram per clip; returns the WAV paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, clip in zip(names, audio.numpy(), strict=True):
        path = folder / f"{name}.wav"
        path.write_bytes(wav_bytes(clip, audio.sample_rate))
        Image.fromarray(spectrogram_image(torch.from_numpy(clip))).save(folder / f"{name}.png")
        paths.append(path)
    return paths


class AudioRoute(Route[Waveforms]):
    """Audio: clips to W&B and TensorBoard, ``<name>.wav`` + ``<name>.png`` per clip; ``write_all``
    writes them into a folder ``<stem>/`` (a WAV has no grid to join clips into)."""

    modality = "audio"
    medium = "Waveforms"
    summary = None  # predict's per-sample WAVs are all there is; its batches are not kept

    def is_medium(self, media: Any) -> bool:
        return isinstance(media, Waveforms)

    def log(
        self,
        trainer: pl.Trainer,
        key: str,
        media: Waveforms,
        caption: Optional[str] = None,
        nrow: Optional[int] = None,
    ) -> None:
        log_audio(trainer, key, media, caption=caption)

    def write(self, folder: Path, names: Sequence[str], media: Waveforms) -> list[Path]:
        return write_audio(folder, names, media)

    def write_all(
        self, stem: Path, names: Sequence[str], media: Waveforms, nrow: Optional[int] = None
    ) -> Path:
        write_audio(stem, names, media)
        return stem
