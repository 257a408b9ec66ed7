"""Raw audio as mu-law tokens for WaveNet-style models (van den Oord et al. 2016, "WaveNet: A Generative
Model for Raw Audio").

Pure functions (tensors or arrays in, the same out; no file, no state):

- ``mu_law_encode`` / ``mu_law_decode``: WaveNet eq. (1), f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu) with
  mu = 255, quantised to 256 classes by rounding to the nearest bin, as
  ``torchaudio.functional.mu_law_encoding`` does.
- ``resample``: polyphase resampling (``scipy.signal.resample_poly``) by the reduced ratio of the two
  rates; ``resample_factors`` refuses ratios whose reduced factors exceed ``MAX_RESAMPLE_FACTOR``.
- ``trim_silence``: drops the leading and trailing frames whose RMS level is below a threshold in dB
  relative to the clip's peak (librosa.effects.trim's rule on non-overlapping frames).
- ``log_mel``: log-mel spectrogram frames with ``ceil(T / hop_length)`` frames for T samples, frame i
  centred on samples [i hop, (i + 1) hop), so that the frame of sample t is t // hop_length (the local
  conditioning of WaveNet, section 2.5). torchaudio and librosa are not dependencies of this package,
  so the mel filterbank (``mel_filterbank``, Slaney's or HTK's mel scale) is built here, following
  librosa.filters.mel.

Data modules (docs/architecture.md, "Data and model" and "Batches"):

- ``AudioFolder``: a folder (searched recursively) of WAV / FLAC / OGG files read with ``soundfile``
  (libsndfile; no FFmpeg), or a named public set (``name: ljspeech`` or ``speech_commands``, fetched
  into ``root`` only with ``download: true``). Every file is mixed to mono, resampled to
  ``sample_rate``, trimmed of leading and trailing silence and optionally peak-normalised, once: the
  results are written back to back as one float16 file, ``<cache>/<digest>.f16`` (the digest covers
  the files' paths, sizes and modification times and these settings; written to a temporary name,
  then renamed), which later runs and worker processes map with ``np.memmap(mode="r")``, so a set
  larger than memory trains. The file list and the headers (rates, lengths) are read in ``__init__``,
  the audio in ``prepare_data`` / ``setup``.
- ``ProceduralNotes``: an offline synthetic set generated in memory from a seed: single notes of four
  instruments (a breathy flute with a steep harmonic rolloff, a clarinet of odd harmonics, a bell of
  inharmonic partials, a plucked string whose high harmonics decay first) over two octaves, with
  attack / decay / sustain / release envelopes, vibrato and a little noise.

Splits: validation (and test) files are chosen by file (a permutation of the files ordered by a hash
of their relative paths, so the split depends on the file names only and adding a file moves few
others); ``val_fraction`` of them, at least one when there are two or more files.

- Training: ``steps_per_epoch * batch_size`` random crops of ``crop_length + 1`` samples per epoch,
  uniform over every valid start in every training file. Crop k of epoch e is drawn from a NumPy
  generator seeded by ``(seed, e * n + k)`` (n crops per epoch): a sampler yields those indices and
  Lightning calls its ``set_epoch`` every epoch (under DDP through ``DistributedSamplerWrapper``, which
  shares the indices out), as ``lit_genai.data.text``'s windows: runs repeat, epochs differ, ranks
  draw distinct crops.
- Validation: each validation file cut into consecutive crops of ``crop_length + 1`` samples with
  stride ``crop_length`` (every sample but a crop's first is predicted once); deterministic.

Batches: ``(tokens, labels)``, tokens (B, T + 1) int64 mu-law ids in [0, 256) with T = crop_length
(the model reads tokens[:, :-1] and predicts tokens[:, 1:]), labels (B,) int64 (the parent folder's
class, the instrument or the note; 0 when unlabelled). With ``mels: true`` a third element, mels
(B, n_mels, ceil((T + 1) / hop_length)) float32, the log-mel frames of the crop itself (local
conditioning). ``decode`` gives ``lit_genai.callbacks.media.Waveforms`` at ``sample_rate``, the audio
media route; ``predict_dataloader`` yields (B,) int64 sample indices.

Shapes: B batch, T samples, C channels, F frames, K frequency bins, M mel bands.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from scipy.signal import resample_poly
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.data.loaders import SplitLoaders
from lit_genai.errors import ConfigError, DataNotFoundError

_KEY = "data.init_args"
MU = 255
NUM_CLASSES = MU + 1  # mu-law token ids
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MAX_RESAMPLE_FACTOR = 1000  # the largest up / down factor of a reduced resampling ratio
ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]


# ---------------------------------------------------------------------- mu-law (WaveNet eq. 1)


def mu_law_encode(x: ArrayLike, mu: int = MU) -> Tensor:
    """Waveform values in [-1, 1] -> mu-law ids in [0, mu] (int64), WaveNet eq. (1).

    f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu), then round((f + 1) / 2 * mu), as
    ``torchaudio.functional.mu_law_encoding``. Values outside [-1, 1] are clipped first.

    Args:
        x: Any shape, float.
        mu: mu (255: 256 classes).
    """
    x = torch.as_tensor(x).double().clamp(-1.0, 1.0)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)  # in [-1, 1]
    return ((f + 1) / 2 * mu + 0.5).long()


def mu_law_decode(ids: ArrayLike, mu: int = MU) -> Tensor:
    """Mu-law ids in [0, mu] -> waveform values in [-1, 1] (float32): the inverse of eq. (1) at the
    bin's centre, as ``torchaudio.functional.mu_law_decoding``.

    Args:
        ids: Any shape, integer.
        mu: mu (255: 256 classes).
    """
    f = torch.as_tensor(ids).double() / mu * 2 - 1  # in [-1, 1]
    return (torch.sign(f) * torch.expm1(f.abs() * math.log1p(mu)) / mu).float()


# ---------------------------------------------------------------------- resampling and trimming


def resample_factors(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """The reduced ratio (up, down) = (new_sr, orig_sr) / gcd of two sample rates.

    ``scipy.signal.resample_poly`` designs a low-pass filter of about 20 max(up, down) taps, so a
    ratio that barely reduces (16001 Hz from 44100 Hz: 16001 / 44100) is slow and pointless; every
    pair of common rates (8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 96 kHz) reduces to factors of at
    most 441.

    Raises:
        ValueError: A rate is not a positive integer, or a factor exceeds ``MAX_RESAMPLE_FACTOR``.
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} and {new_sr} Hz")
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise ValueError(
            f"resampling {orig_sr} Hz to {new_sr} Hz needs the factors {up}/{down}, more than "
            f"{MAX_RESAMPLE_FACTOR}"
        )
    return up, down


def resample(wave: ArrayLike, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample along the last axis with ``scipy.signal.resample_poly`` (a Kaiser-windowed polyphase
    low-pass filter): T samples become ceil(T up / down).

    Args:
        wave: (..., T) float waveform (a NumPy array or tensor).
        orig_sr: Its sample rate (Hz).
        new_sr: The wanted sample rate (Hz).

    Returns:
        (..., T') float32 NumPy array.
    """
    wave = np.asarray(wave, dtype=np.float32)
    up, down = resample_factors(orig_sr, new_sr)
    if up == down:
        return wave.copy()
    return resample_poly(wave, up, down, axis=-1).astype(np.float32)


def trim_silence(wave: ArrayLike, threshold_db: float = -40.0, frame: int = 256) -> np.ndarray:
    """Drop the leading and trailing silence of a mono clip.

    The clip is cut into consecutive frames of ``frame`` samples (the last one may be shorter); a frame
    is silent when its RMS is below ``threshold_db`` dB relative to the clip's peak |sample|, i.e.
    20 log10(rms / peak) < threshold_db. The clip from the first to the last loud frame is kept; a
    silent clip (all frames silent, or all zero) gives an empty array.

    Args:
        wave: (T,) float waveform.
        threshold_db: Level (dB, negative) below the peak under which a frame is silence.
        frame: Samples per frame.

    Returns:
        (T',) float32, T' <= T.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"trim_silence takes a mono (T,) clip, got shape {wave.shape}")
    if frame < 1:
        raise ValueError(f"frame must be at least 1 sample, got {frame}")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        return wave[:0].copy()
    n = -(-wave.size // frame)  # frames, the last one partial
    padded = np.zeros(n * frame, dtype=np.float64)
    padded[: wave.size] = wave
    counts = np.full(n, frame, dtype=np.float64)
    counts[-1] = wave.size - (n - 1) * frame
    rms = np.sqrt((padded.reshape(n, frame) ** 2).sum(axis=1) / counts)  # (n,)
    loud = np.flatnonzero(rms >= peak * 10.0 ** (threshold_db / 20.0))
    if loud.size == 0:
        return wave[:0].copy()
    return wave[loud[0] * frame : (loud[-1] + 1) * frame].copy()


# ---------------------------------------------------------------------- log-mel frames


def hz_to_mel(hz: ArrayLike, mel_scale: Literal["slaney", "htk"] = "slaney") -> Tensor:
    """Frequencies (Hz) -> mels: HTK's 2595 log10(1 + f / 700), or Slaney's (Auditory Toolbox):
    linear f / (200 / 3) below 1 kHz, logarithmic with 27 mels per factor 6.4 above."""
    f = torch.as_tensor(hz, dtype=torch.float64)
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    logstep = math.log(6.4) / 27.0
    linear = f / (200.0 / 3.0)
    return torch.where(f >= 1000.0, 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) / logstep, linear)


def mel_to_hz(mels: ArrayLike, mel_scale: Literal["slaney", "htk"] = "slaney") -> Tensor:
    """Mels -> frequencies (Hz), the inverse of ``hz_to_mel``."""
    m = torch.as_tensor(mels, dtype=torch.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    logstep = math.log(6.4) / 27.0
    return torch.where(m >= 15.0, 1000.0 * torch.exp(logstep * (m - 15.0)), m * (200.0 / 3.0))


@functools.lru_cache(maxsize=16)
def _filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float, mel_scale: str, norm: Optional[str]
) -> Tensor:
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (K,)
    edges = mel_to_hz(
        torch.linspace(float(hz_to_mel(f_min, mel_scale)), float(hz_to_mel(f_max, mel_scale)), n_mels + 2),
        mel_scale,
    )  # (M + 2,) band edges and centres (Hz)
    widths = edges.diff()  # (M + 1,)
    ramps = edges[:, None] - freqs[None, :]  # (M + 2, K)
    rising = -ramps[:-2] / widths[:-1, None]  # (M, K)
    falling = ramps[2:] / widths[1:, None]  # (M, K)
    weights = torch.minimum(rising, falling).clamp(min=0)  # (M, K) triangles
    if norm == "slaney":  # unit area (in Hz) per band
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.float()


def mel_filterbank(
    n_fft: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
    mel_scale: Literal["slaney", "htk"] = "slaney",
    norm: Optional[Literal["slaney"]] = "slaney",
) -> Tensor:
    """Triangular mel filters over the ``n_fft // 2 + 1`` STFT bins, as librosa.filters.mel.

    Band m rises linearly (in Hz) from edge m to its centre, edge m + 1, and falls to edge m + 2; the
    M + 2 edges are equally spaced in mels from ``f_min`` to ``f_max``. ``norm="slaney"`` scales band m
    by 2 / (edge[m + 2] - edge[m]), so that each band has unit area in Hz (librosa's default; None:
    peaks of 1, torchaudio's default).

    Returns:
        (M, K) float32 weights, K = n_fft // 2 + 1.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel bands need 0 <= f_min < f_max <= sample_rate / 2, got {f_min} and {f_max} Hz")
    return _filterbank(int(n_fft), int(n_mels), int(sample_rate), float(f_min), float(f_max), mel_scale, norm)


def num_frames(num_samples: int, hop_length: int) -> int:
    """Frames of ``log_mel`` for a clip of ``num_samples`` samples: ceil(T / hop_length)."""
    return -(-int(num_samples) // int(hop_length))


def log_mel(
    wave: ArrayLike,
    sample_rate: int,
    n_mels: int = 80,
    n_fft: int = 1024,
    hop_length: int = 256,
    f_min: float = 0.0,
    f_max: Optional[float] = None,
    mel_scale: Literal["slaney", "htk"] = "slaney",
    eps: float = 1e-5,
) -> Tensor:
    """Log-mel spectrogram: ln(max(mel filterbank @ |STFT|, eps)), Hann window of ``n_fft`` samples.

    There are ceil(T / hop_length) frames, frame i centred on the middle of the samples
    [i hop, (i + 1) hop): the clip is padded by (n_fft - hop) // 2 samples on the left and as many on
    the right as the last frame needs (reflected, or zeros for a clip shorter than the padding).
    ``mel_scale="slaney"`` uses Slaney's scale with unit-area bands (librosa's default, as in Tacotron
    2 / HiFi-GAN features); ``"htk"`` HTK's scale with unit-peak bands (torchaudio's default).

    Args:
        wave: (B, T) or (T,) float waveforms.
        sample_rate: Their rate (Hz).
        n_mels: Mel bands M.
        n_fft: FFT size and window length; at least ``hop_length``.
        hop_length: Samples per frame.
        f_min: Lowest band edge (Hz).
        f_max: Highest band edge (Hz); None = sample_rate / 2.
        mel_scale: ``"slaney"`` or ``"htk"``.
        eps: Magnitudes are clamped to at least this before the log (ln(1e-5) = -11.5 is the floor).

    Returns:
        (B, M, F) float32, or (M, F) for a (T,) clip, with F = ceil(T / hop_length).
    """
    x = torch.as_tensor(wave).float()
    single = x.dim() == 1
    x = x[None] if single else x  # (B, T)
    if x.dim() != 2 or x.shape[-1] < 1:
        raise ValueError(f"log_mel takes (B, T) or (T,) waveforms with T >= 1, got shape {tuple(x.shape)}")
    if hop_length < 1 or n_fft < hop_length:
        raise ValueError(
            f"log_mel needs 1 <= hop_length <= n_fft, got hop_length={hop_length}, n_fft={n_fft}"
        )
    T = x.shape[-1]
    frames = num_frames(T, hop_length)
    left = (n_fft - hop_length) // 2
    right = n_fft + (frames - 1) * hop_length - T - left  # so that exactly `frames` windows fit
    mode = "reflect" if max(left, right) < T else "constant"
    padded = F.pad(x[:, None], (left, right), mode=mode)[:, 0]  # (B, T + left + right)
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(
        padded, n_fft, hop_length=hop_length, window=window, center=False, return_complex=True
    ).abs()  # (B, K, F)
    norm = "slaney" if mel_scale == "slaney" else None
    bank = mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max, mel_scale, norm).to(x.device)  # (M, K)
    out = torch.log(torch.matmul(bank, spec).clamp(min=eps))  # (B, M, F)
    return out[0] if single else out


# ---------------------------------------------------------------------- clips and crops


class _Clips:
    """Mono clips back to back in one (N,) waveform: a float16 file mapped with ``np.memmap(mode="r")``
    on first use (in each worker process: the map itself is not pickled), or an array in memory.

    Args:
        lengths: (n,) samples of each clip.
        path: The float16 file, or None with ``data``.
        data: (N,) float32 waveform in memory, or None with ``path``.
    """

    def __init__(
        self, lengths: Sequence[int], path: Optional[Path] = None, data: Optional[np.ndarray] = None
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (n,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (n,)
        self.path, self._data = path, data

    def __len__(self) -> int:
        return len(self.lengths)

    def _array(self) -> np.ndarray:
        if self._data is None:
            total = int(self.lengths.sum())
            self._data = (
                np.memmap(self.path, dtype=np.float16, mode="r", shape=(total,))
                if total
                else np.zeros(0, np.float16)
            )
        return self._data

    def clip(self, i: int) -> np.ndarray:
        """(L_i,) float32: the whole clip i."""
        start = int(self.offsets[i])
        return np.asarray(self._array()[start : start + int(self.lengths[i])], dtype=np.float32)

    def crop(self, i: int, start: int, n: int) -> np.ndarray:
        """(n,) float32: samples [start, start + n) of clip i, zeros past its end."""
        begin = int(self.offsets[i]) + start
        stop = int(self.offsets[i]) + min(start + n, int(self.lengths[i]))
        out = np.zeros(n, dtype=np.float32)
        out[: max(stop - begin, 0)] = self._array()[begin:stop]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_data"] = None
        return state


class _CropSet(Dataset):
    """Crops of ``crop_length + 1`` samples as ``(tokens (T + 1,) int64, label () int64[, mels (M, F)])``.

    Args:
        clips: The waveforms.
        labels: (n,) int64 label of each clip.
        crop_length: T; crops hold T + 1 samples.
        mels: None, or a function (T + 1,) waveform -> (M, F) log-mel frames.
    """

    def __init__(self, clips: _Clips, labels: np.ndarray, crop_length: int, mels: Any = None) -> None:
        self.clips, self.labels, self.crop_length, self.mels = clips, labels, crop_length, mels

    def _item(self, clip: int, start: int) -> tuple[Tensor, ...]:
        wave = torch.from_numpy(self.clips.crop(clip, start, self.crop_length + 1))  # (T + 1,)
        out = (mu_law_encode(wave), torch.tensor(int(self.labels[clip]), dtype=torch.long))
        return out if self.mels is None else (*out, self.mels(wave))


class _RandomCrops(_CropSet):
    """Crop k starts at a uniform valid start over all the given clips, drawn from
    ``default_rng((seed, k))``; a clip shorter than the crop (zero-padded) has the one start 0.

    Args:
        clips, labels, crop_length, mels: As ``_CropSet``.
        members: (m,) the clips crops are drawn from.
        seed: First entropy word of every crop's generator.
        length: Crops per epoch (``len`` of the set; indices beyond it belong to later epochs).
    """

    def __init__(
        self,
        clips: _Clips,
        labels: np.ndarray,
        crop_length: int,
        members: Sequence[int],
        seed: int,
        length: int,
        mels: Any = None,
    ) -> None:
        super().__init__(clips, labels, crop_length, mels)
        self.members = np.asarray(members, dtype=np.int64)  # (m,)
        starts = np.maximum(clips.lengths[self.members] - crop_length, 1)  # (m,) valid starts per clip
        self.cumulative = np.cumsum(starts)  # (m,)
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[Tensor, ...]:
        u = int(np.random.default_rng((self.seed, int(k))).integers(int(self.cumulative[-1])))
        j = int(np.searchsorted(self.cumulative, u, side="right"))
        start = u - (int(self.cumulative[j - 1]) if j else 0)
        return self._item(int(self.members[j]), start)


class _FixedCrops(_CropSet):
    """Consecutive crops of each given clip: crop j of a clip starts at j * crop_length (stride T), a
    clip shorter than the crop gives one zero-padded crop."""

    def __init__(
        self, clips: _Clips, labels: np.ndarray, crop_length: int, members: Sequence[int], mels: Any = None
    ) -> None:
        super().__init__(clips, labels, crop_length, mels)
        index = []
        for i in members:
            count = max((int(clips.lengths[i]) - 1) // crop_length, 1)
            index += [(int(i), j * crop_length) for j in range(count)]
        self.index = index  # (clip, start) of each crop

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> tuple[Tensor, ...]:
        return self._item(*self.index[j])


# ---------------------------------------------------------------------- shared data-module parts


class _AudioTokens(SplitLoaders, L.LightningDataModule):
    """What ``AudioFolder`` and ``ProceduralNotes`` share: attributes, checks, loaders and ``decode``."""

    epoch_indices = True  # training window e * n + i is drawn from a generator seeded by that index

    def _init_common(
        self,
        sample_rate: int,
        crop_length: int,
        batch_size: int,
        steps_per_epoch: int,
        mels: bool,
        n_mels: int,
        n_fft: int,
        hop_length: int,
        seed: int,
        num_workers: int,
        predict_samples: int,
    ) -> None:
        if sample_rate < 1:
            raise ConfigError(f"{_KEY}.sample_rate={sample_rate} must be a positive number of Hz")
        if crop_length < 1 or batch_size < 1 or steps_per_epoch < 1:
            raise ConfigError(
                f"{_KEY}: crop_length={crop_length}, batch_size={batch_size} and "
                f"steps_per_epoch={steps_per_epoch} must all be at least 1"
            )
        if mels and not (1 <= hop_length <= n_fft and 1 <= n_mels <= n_fft // 2 + 1):
            raise ConfigError(
                f"{_KEY}: mels need 1 <= hop_length <= n_fft and 1 <= n_mels <= n_fft // 2 + 1, got "
                f"hop_length={hop_length}, n_fft={n_fft}, n_mels={n_mels}"
            )
        self.sample_rate, self.crop_length, self.batch_size = sample_rate, crop_length, batch_size
        self.steps_per_epoch, self.mels, self.n_mels = steps_per_epoch, mels, n_mels
        self.n_fft, self.hop_length, self.seed = n_fft, hop_length, seed
        self.num_workers, self.predict_samples = num_workers, predict_samples
        self.modality = "audio"
        self.vocab_size: int = NUM_CLASSES
        self.block_size: int = crop_length  # the model's input length; crops hold crop_length + 1
        self.sample_shape: tuple[int] = (crop_length,)
        self.mel_frames: Optional[int] = num_frames(crop_length + 1, hop_length) if mels else None
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def _mel_function(self) -> Any:
        if not self.mels:
            return None
        return functools.partial(
            log_mel,
            sample_rate=self.sample_rate,
            n_mels=self.n_mels,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
        )

    def _build(self, clips: _Clips, labels: np.ndarray, train: Sequence[int], val: Sequence[int]) -> None:
        mels, n = self._mel_function(), self.steps_per_epoch * self.batch_size
        self.train_set = _RandomCrops(clips, labels, self.crop_length, train, self.seed, n, mels)
        self.val_set = _FixedCrops(clips, labels, self.crop_length, val, mels)
        self.test_set = self.val_set

    # ------------------------------------------------------------------ the audio medium
    def decode(self, ids: Tensor) -> Any:
        """Mu-law ids (B, T) (or one row (T,)) -> ``Waveforms`` (B, T) in [-1, 1] at ``sample_rate``."""
        from lit_genai.media import Waveforms  # lit_genai.callbacks imports the data package

        ids = torch.as_tensor(ids).detach().long().cpu()
        ids = ids[None] if ids.dim() == 1 else ids  # (B, T)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= NUM_CLASSES):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ConfigError(
                f"token id {bad} is outside the {NUM_CLASSES} mu-law classes of the audio data: the model "
                "was trained on other tokens (model vocab_size and data vocab_size differ)"
            )
        return Waveforms(mu_law_decode(ids), int(self.sample_rate))

    def identity(self) -> dict[str, Any]:
        """What decides the validation / test crops (and, with ``batch_size``, the training ones), as a
        JSON-able dict: the class and every init argument but batching, loading and downloading."""
        cls = type(self)
        skip = {"self", "batch_size", "num_workers", "predict_samples", "download"}
        out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        for name in inspect.signature(cls.__init__).parameters:
            if name not in skip:
                out[name] = getattr(self, name)
        return out


# ---------------------------------------------------------------------- named public sets


LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# name -> (URL, archive file in root, audio folder in root, folder the archive unpacks to (None: its
# members sit at the top level), size for the message, folders left out)
NAMED_SETS: dict[str, tuple[str, str, str, Optional[str], str, tuple[str, ...]]] = {
    "ljspeech": (LJSPEECH_URL, "LJSpeech-1.1.tar.bz2", "LJSpeech-1.1/wavs", "LJSpeech-1.1", "2.6 GB", ()),
    "speech_commands": (
        SPEECH_COMMANDS_URL,
        "speech_commands_v0.02.tar.gz",
        "SpeechCommands/speech_commands_v0.02",
        None,
        "2.3 GB",
        ("_background_noise_",),
    ),
}


def _fetch(url: str, file: Path) -> None:
    """Download ``url`` into ``file`` (a temporary name, then renamed)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, file)


def _extract(archive: Path, root: Path, target: Path, inner: Optional[str]) -> None:
    """Unpack ``archive`` into a temporary folder of ``root``, then rename its audio folder to ``target``
    (readers and concurrent runs see the whole folder or none)."""
    scratch = root / f".{archive.name}.{os.getpid()}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        source = scratch / inner if inner is not None else scratch
        final = root / inner if inner is not None else target
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, final)
        except OSError:
            if not final.is_dir():  # else another process unpacked it first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------- AudioFolder


class AudioFolder(_AudioTokens):
    """A folder of audio files (or a named public set) as mu-law token crops (module docstring).

    Args:
        root: The folder searched recursively for ``.wav``, ``.flac`` and ``.ogg`` files (hidden
            folders are skipped). With ``name``: the folder holding (or receiving) the named set.
        name: A named set in ``root``: ``"ljspeech"`` (LJSpeech-1.1: 13,100 clips of one speaker at
            22,050 Hz, in ``root``/LJSpeech-1.1/wavs) or ``"speech_commands"`` (Speech Commands v0.02:
            one-second words at 16 kHz, one folder per word, in
            ``root``/SpeechCommands/speech_commands_v0.02; its ``_background_noise_`` folder is left
            out; its clips are shorter than a second, so use a shorter ``crop_length`` or
            ``short_files: pad``). An archive already in ``root`` is unpacked without network.
        download: Fetch the named set's archive into ``root`` and unpack it, if missing (needs
            internet; it happens in ``__init__``, because the file list is needed before the model
            is built).
        sample_rate: Rate (Hz) every file is resampled to, and of the decoded samples.
        crop_length: T, the model's input length; crops hold T + 1 samples.
        batch_size: Crops per batch (also sample indices per predict batch).
        steps_per_epoch: Training batches per epoch; an epoch draws ``steps_per_epoch * batch_size``
            random crops (shared out across DDP ranks).
        val_fraction: Share of the files kept for validation and test (by file; at least one file
            when there are two or more; 0 = none).
        labels: ``"folder"``: label each file with its parent folder's name (a speaker, a word):
            ``class_names`` the sorted folder names, ``num_classes`` their number. ``"none"``: labels
            0 and ``num_classes`` 0.
        mels: Add the log-mel frames of each crop to the batches (local conditioning):
            ``(tokens, labels, mels (B, n_mels, ceil((T + 1) / hop_length)))``.
        n_mels: Mel bands of ``mels``.
        n_fft: FFT size (and Hann window length) of ``mels``.
        hop_length: Samples per mel frame.
        trim_db: Trim leading and trailing frames (10 ms) quieter than this many dB below the file's
            peak; None keeps the files whole.
        peak_normalize: Scale each file (after trimming) so that its largest |sample| is this (e.g.
            0.95); None keeps the levels.
        short_files: A file with fewer than ``crop_length + 1`` samples (after trimming): ``"error"``
            stops with its name, ``"skip"`` leaves it out (with a warning), ``"pad"`` zero-pads its one
            crop at the end (in training it is drawn as often as one start of a longer file).
        cache_dir: Folder of the processed float16 waveforms; None = ``.lit_genai_audio`` in the audio
            folder.
        seed: Seed of the training crops' offsets.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        root: str,
        name: Optional[Literal["ljspeech", "speech_commands"]] = None,
        download: bool = False,
        sample_rate: int = 16000,
        crop_length: int = 16000,
        batch_size: int = 8,
        steps_per_epoch: int = 200,
        val_fraction: float = 0.1,
        labels: Literal["none", "folder"] = "none",
        mels: bool = False,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 256,
        trim_db: Optional[float] = -40.0,
        peak_normalize: Optional[float] = None,
        short_files: Literal["error", "skip", "pad"] = "error",
        cache_dir: Optional[str] = None,
        seed: int = 0,
        num_workers: int = 0,
        predict_samples: int = 8,
    ) -> None:
        super().__init__()
        self._init_common(
            sample_rate, crop_length, batch_size, steps_per_epoch, mels, n_mels, n_fft, hop_length, seed,
            num_workers, predict_samples,
        )  # fmt: skip
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"{_KEY}.val_fraction={val_fraction} must be in [0, 1)")
        if peak_normalize is not None and not 0 < peak_normalize <= 1:
            raise ConfigError(f"{_KEY}.peak_normalize={peak_normalize} must be in (0, 1], or null")
        self.root, self.name, self.download, self.val_fraction = root, name, download, val_fraction
        self.labels, self.trim_db, self.peak_normalize = labels, trim_db, peak_normalize
        self.short_files, self.cache_dir = short_files, cache_dir

        self.folder = self._audio_folder()
        self.files: list[Path] = self._list_files()
        self.file_rates, self.file_lengths = self._read_headers()  # (n,) Hz, (n,) samples at sample_rate
        self.durations = [n / sample_rate for n in self.file_lengths]  # seconds after resampling
        if labels == "folder":
            loose = [f for f in self.files if f.parent == self.folder]
            if loose:
                raise ConfigError(
                    f"{_KEY}.labels=folder labels each file by its parent folder, but {loose[0]} sits in the "
                    f"audio folder itself: move the files into one folder per class, or set labels none"
                )
            self.class_names: Optional[list[str]] = sorted({f.parent.name for f in self.files})
            index = {c: i for i, c in enumerate(self.class_names)}
            self.file_labels = np.array([index[f.parent.name] for f in self.files], dtype=np.int64)
        else:
            self.class_names = None
            self.file_labels = np.zeros(len(self.files), dtype=np.int64)
        self.num_classes: int = len(self.class_names) if self.class_names is not None else 0
        self.train_files, self.val_files = self._split()
        self._digest = self._content_digest()

    # ------------------------------------------------------------------ files
    def _source(self) -> str:
        return f"{_KEY}.name={self.name}" if self.name is not None else f"{_KEY}.root={self.root}"

    def _audio_folder(self) -> Path:
        root = Path(self.root).expanduser()
        if self.name is None:
            if not root.is_dir():
                raise DataNotFoundError(f"{_KEY}.root={self.root!r}: no such folder of audio files")
            return root
        url, archive, folder, inner, size, _ = NAMED_SETS[self.name]
        target = root / folder
        if not target.is_dir() and (root / archive).is_file():
            self._unpack(root / archive, root, target, inner)
        if not target.is_dir() and self.download:
            try:
                _fetch(url, root / archive)
            except OSError as err:  # URLError (no network) and HTTPError are OSErrors
                raise DataNotFoundError(
                    f"{_KEY}.name={self.name}: downloading {url} into {str(root)!r} failed ({err}); without "
                    f"internet, fetch it elsewhere and put it (or its unpacked contents) there"
                ) from err
            self._unpack(root / archive, root, target, inner)
        if not target.is_dir():
            raise DataNotFoundError(
                f"{_KEY}.name={self.name}: {str(target)!r} not found: pass --data.download true "
                f"(needs internet, {size}) or fetch {url} elsewhere and put it, or its unpacked contents, "
                f"in {str(root)!r} ({_KEY}.root)"
            )
        return target

    def _unpack(self, archive: Path, root: Path, target: Path, inner: Optional[str]) -> None:
        try:
            _extract(archive, root, target, inner)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataNotFoundError(
                f"{_KEY}.name={self.name}: unpacking {str(archive)!r} failed ({_reason(err)}): delete it and "
                f"download it again ({NAMED_SETS[self.name][0]})"
            ) from err

    def _list_files(self) -> list[Path]:
        left_out = NAMED_SETS[self.name][5] if self.name is not None else ()
        files = []
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in left_out)
            files += [Path(dirpath) / f for f in filenames if f.lower().endswith(AUDIO_EXTENSIONS)]
        if not files:
            raise DataNotFoundError(
                f"no {'/'.join(AUDIO_EXTENSIONS)} files under {str(self.folder)!r} ({self._source()})"
            )
        return sorted(files, key=lambda f: f.relative_to(self.folder).as_posix())

    def _read_headers(self) -> tuple[list[int], list[int]]:
        """Each file's rate and its length at ``sample_rate`` (from the headers), checked."""
        rates, lengths = [], []
        for file in self.files:
            try:
                info = soundfile.info(str(file))
            except (soundfile.SoundFileError, RuntimeError, OSError) as err:
                raise ConfigError(
                    f"{file} is not a readable audio file ({_reason(err)}): remove or re-encode it "
                    f"({self._source()})"
                ) from err
            try:
                up, down = resample_factors(info.samplerate, self.sample_rate)
            except ValueError as err:
                raise ConfigError(
                    f"{_KEY}.sample_rate={self.sample_rate}: {file} ({info.samplerate} Hz) cannot be "
                    f"resampled to it: {err} (at most {MAX_RESAMPLE_FACTOR}): choose a rate such as 16000 or "
                    "22050"
                ) from err
            n = -(-int(info.frames) * up // down)  # resample_poly's ceil(T up / down)
            if n < self.crop_length + 1 and self.short_files == "error":
                raise self._short(file, n, "")
            rates.append(int(info.samplerate))
            lengths.append(n)
        return rates, lengths

    def _short(self, file: Path, n: int, when: str) -> ConfigError:
        return ConfigError(
            f"{file} has {n} samples ({n / self.sample_rate:.3f} s at {self.sample_rate} Hz{when}), "
            f"fewer than {_KEY}.crop_length + 1 = {self.crop_length + 1}: lower crop_length, set "
            f"{_KEY}.short_files pad or skip, or remove the file"
        )

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train files, val files): the ``val_fraction`` of the files with the smallest hashes of their
        relative paths (a permutation that depends on the names only)."""
        n = len(self.files)
        if self.val_fraction == 0:
            return np.arange(n), np.zeros(0, dtype=np.int64)
        if n < 2:
            raise ConfigError(
                f"{_KEY}.val_fraction={self.val_fraction}: validation is split by file, and "
                f"{self._source()} has one file: add files or set val_fraction 0"
            )
        keys = [hashlib.sha256(f.relative_to(self.folder).as_posix().encode()).digest() for f in self.files]
        order = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
        count = min(max(round(self.val_fraction * n), 1), n - 1)
        return np.sort(order[count:]), np.sort(order[:count])

    # ------------------------------------------------------------------ the waveform cache
    def _content_digest(self) -> str:
        """The cache file's name: the processing settings and each file's path, size and mtime."""
        settings = f"v1:{self.sample_rate}:{self.trim_db}:{self._trim_frame()}:{self.peak_normalize}"
        digest = hashlib.sha256(settings.encode())
        for file in self.files:
            stat = file.stat()
            digest.update(f"\0{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _trim_frame(self) -> int:
        return max(1, round(self.sample_rate / 100))  # 10 ms

    def _cache_paths(self) -> tuple[Path, Path]:
        folder = Path(self.cache_dir) if self.cache_dir is not None else self.folder / ".lit_genai_audio"
        return folder / f"{self._digest}.f16", folder / f"{self._digest}.lengths.npy"

    def load(self, index: int) -> np.ndarray:
        """File ``index`` as the model sees it: mono, at ``sample_rate``, trimmed, normalised; (T,)
        float32."""
        file = self.files[index]
        try:
            data, rate = soundfile.read(str(file), dtype="float32", always_2d=True)  # (T, C)
        except (soundfile.SoundFileError, RuntimeError, OSError) as err:
            raise ConfigError(
                f"{file} is not a readable audio file ({_reason(err)}): remove or re-encode it "
                f"({self._source()})"
            ) from err
        wave = resample(data.mean(axis=1), rate, self.sample_rate)  # (T,)
        if self.trim_db is not None:
            wave = trim_silence(wave, self.trim_db, self._trim_frame())
        if self.peak_normalize is not None and wave.size and np.abs(wave).max() > 0:
            wave = wave * (self.peak_normalize / np.abs(wave).max())
        return wave.astype(np.float32)

    def _write_cache(self) -> tuple[Path, np.ndarray]:
        """Process every file once into the float16 cache (module docstring); its path and the lengths."""
        data_file, lengths_file = self._cache_paths()
        if data_file.is_file() and lengths_file.is_file():
            return data_file, np.load(lengths_file)
        data_file.parent.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.partial"
        partial, partial_lengths = Path(f"{data_file}{suffix}"), Path(f"{lengths_file}{suffix}")
        lengths = []
        try:
            with open(partial, "wb") as out:
                for i in range(len(self.files)):
                    wave = self.load(i)
                    wave.astype(np.float16).tofile(out)
                    lengths.append(wave.size)
            with open(partial_lengths, "wb") as out:
                np.save(out, np.asarray(lengths, dtype=np.int64))
        except BaseException:
            partial.unlink(missing_ok=True)
            partial_lengths.unlink(missing_ok=True)
            raise
        os.replace(partial, data_file)
        os.replace(partial_lengths, lengths_file)  # last: its presence means the cache is whole
        return data_file, np.asarray(lengths, dtype=np.int64)

    # ------------------------------------------------------------------ splits
    def prepare_data(self) -> None:
        self._write_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        data_file, lengths = self._write_cache()
        clips = _Clips(lengths, path=data_file)
        short = [i for i in range(len(self.files)) if lengths[i] < self.crop_length + 1]
        if short and self.short_files == "error":
            i = short[0]
            when = f" after trimming silence below {self.trim_db} dB" if self.trim_db is not None else ""
            raise self._short(self.files[i], int(lengths[i]), when)
        train, val = self.train_files, self.val_files
        if short and self.short_files == "skip":
            rank_zero_warn(
                f"{self._source()}: {len(short)} of {len(self.files)} files are shorter than "
                f"crop_length + 1 = {self.crop_length + 1} samples and are left out ({_KEY}.short_files=skip)"
            )
            train, val = np.setdiff1d(train, short), np.setdiff1d(val, short)
        empty = [lengths[i] == 0 for i in range(len(self.files))]
        train, val = [i for i in train if not empty[i]], [i for i in val if not empty[i]]
        if not train or (self.val_fraction > 0 and not val):
            split = "training" if not train else "validation"
            raise ConfigError(
                f"{self._source()}: no {split} file is left with audio of crop_length + 1 = "
                f"{self.crop_length + 1} samples: lower crop_length or trim_db, or add files"
            )
        self._build(clips, self.file_labels, train, val)

    def identity(self) -> dict[str, Any]:
        """``_AudioTokens.identity`` with ``root`` as an absolute path and a digest of the files."""
        out = super().identity()
        out.pop("cache_dir")
        out["root"] = str(Path(self.root).expanduser().resolve())
        out["content"] = self._digest
        return out


def _reason(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


# ---------------------------------------------------------------------- ProceduralNotes


INSTRUMENTS = ("flute", "clarinet", "bell", "pluck")
LOWEST_NOTE = 48  # MIDI C3, 130.8 Hz
NUM_NOTES = 25  # two octaves: C3 .. C5
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Risset's bell: partial frequency ratios and relative amplitudes (Risset 1969, "An Introductory
# Catalogue of Computer Synthesized Sounds", #430).
_BELL_RATIOS = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])
_BELL_AMPS = np.array([1.0, 0.67, 1.0, 1.8, 2.67, 1.67, 1.46, 1.33, 1.33])


def note_name(midi: int) -> str:
    """MIDI note number -> its name with the octave: 60 -> ``"C4"``."""
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def midi_to_hz(midi: float) -> float:
    """Equal temperament, A4 (69) = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _partials(instrument: str, f0: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(ratios, amplitudes, decay rates in 1/s) of the instrument's partials."""
    k = np.arange(1, 64, dtype=np.float64)
    if instrument == "flute":  # all harmonics, a steep geometric rolloff
        return k, rng.uniform(0.25, 0.4) ** (k - 1), np.zeros_like(k)
    if instrument == "clarinet":  # odd harmonics only, 1 / k (a cylindrical bore)
        odd = k[::2]
        return odd, 1.0 / odd, np.zeros_like(odd)
    if instrument == "bell":  # inharmonic partials, the higher decaying faster
        ratios = _BELL_RATIOS * rng.uniform(0.995, 1.005, _BELL_RATIOS.size)
        return ratios, _BELL_AMPS / _BELL_AMPS.max(), rng.uniform(1.5, 2.5) * ratios
    # A string plucked at a point p of its length: a_k ~ |sin(pi k p)| / k, the high harmonics decaying
    # first, slightly stretched partials (stiffness B).
    p, stiffness = rng.uniform(0.1, 0.3), rng.uniform(0, 2e-4)
    ratios = k * np.sqrt(1 + stiffness * k**2)
    return ratios, np.abs(np.sin(np.pi * k * p)) / k, rng.uniform(1.5, 3) * (1 + 0.3 * (k - 1))


def synth_note(
    instrument: str, midi: int, sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """One note of ``INSTRUMENTS``: a sum of partials below 0.45 sample_rate with vibrato, an envelope
    and a little noise, peak-normalised to a random level in [0.3, 0.9].

    Flute and clarinet sustain (attack, decay to a sustain level, release at the note's end) with
    vibrato; the bell and the pluck strike (a 2-5 ms attack, each partial decaying exponentially at
    its own rate, the pluck damped at the note's end). The note starts within the first 50 ms and
    lasts 60-90 % of the clip.

    Args:
        instrument: One of ``INSTRUMENTS``.
        midi: MIDI note number (its fundamental f0).
        sample_rate: Hz.
        seconds: Clip length.
        rng: The clip's generator (every random choice is drawn from it).

    Returns:
        (T,) float32, T = round(seconds sample_rate).
    """
    if instrument not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {instrument!r}: one of {INSTRUMENTS}")
    T = int(round(seconds * sample_rate))
    t = np.arange(T, dtype=np.float64) / sample_rate  # (T,) seconds
    f0 = midi_to_hz(midi)
    onset = rng.uniform(0, 0.05)
    length = rng.uniform(0.6, 0.9) * seconds
    tau = np.clip(t - onset, 0, None)  # (T,) time since the onset
    sustained = instrument in ("flute", "clarinet")
    depth, rate = 0.0, 5.0  # vibrato: relative frequency deviation and its rate (Hz)
    if instrument == "flute":
        depth, rate = rng.uniform(0.004, 0.008), rng.uniform(4.5, 6)
    elif instrument == "clarinet":
        depth, rate = rng.uniform(0.001, 0.003), rng.uniform(4, 6)
    phase0 = rng.uniform(0, 2 * np.pi)
    # Phase of the fundamental under f(t) = f0 (1 + depth sin(2 pi rate t + phase0)), integrated.
    cycles = f0 * (
        tau - depth / (2 * np.pi * rate) * (np.cos(2 * np.pi * rate * tau + phase0) - np.cos(phase0))
    )
    ratios, amps, decays = _partials(instrument, f0, rng)
    keep = ratios * f0 * (1 + depth) < 0.45 * sample_rate
    ratios, amps, decays = ratios[keep], amps[keep], decays[keep]
    phases = rng.uniform(0, 2 * np.pi, ratios.size)  # (K,)
    partials = np.sin(2 * np.pi * ratios[:, None] * cycles[None, :] + phases[:, None])  # (K, T)
    if np.any(decays > 0):
        partials *= np.exp(-decays[:, None] * tau[None, :])
    tone = amps @ partials  # (T,)
    # Envelope: attack, decay to sustain, release after the note's end.
    if sustained:
        attack = rng.uniform(0.06, 0.12) if instrument == "flute" else rng.uniform(0.02, 0.05)
        decay, level, release = rng.uniform(0.05, 0.1), rng.uniform(0.6, 0.9), rng.uniform(0.05, 0.15)
    else:
        attack, decay, level = rng.uniform(0.002, 0.005), 0.0, 1.0
        release = rng.uniform(0.3, 0.6) if instrument == "bell" else rng.uniform(0.03, 0.08)
    env = np.interp(tau, [0, attack, attack + decay], [0, 1, level])
    env = env * np.exp(-np.clip(tau - length, 0, None) / release)
    env[t < onset] = 0
    signal = env * tone
    scale = np.abs(signal).max() or 1.0
    signal = signal / scale
    breath = rng.uniform(0.03, 0.06) if instrument == "flute" else 0.005
    signal = signal + breath * env * rng.standard_normal(T) + 1e-3 * rng.standard_normal(T)
    return (signal * (rng.uniform(0.3, 0.9) / np.abs(signal).max())).astype(np.float32)


class ProceduralNotes(_AudioTokens):
    """Synthetic notes of four instruments, generated in memory from a seed (module docstring).

    Clip i of a split is instrument i mod 4 playing a uniform note of ``NUM_NOTES`` (C3 .. C5), drawn
    with ``default_rng((seed, split, i))`` (split 0 trains, 1 validates), so training and validation
    clips differ and the same seed gives the same clips.

    Args:
        sample_rate: Hz of the clips and of the decoded samples.
        clip_seconds: Length of each clip.
        num_clips: Training clips.
        val_clips: Validation (and test) clips.
        crop_length: T, the model's input length; crops hold T + 1 samples (random in training,
            consecutive with stride T in validation). At most the clip length minus one.
        batch_size: Crops per batch (also sample indices per predict batch).
        steps_per_epoch: Training batches per epoch.
        label: Label each clip with its ``"instrument"`` (4 classes) or its ``"note"`` (25 classes,
            named ``"C3"`` .. ``"C5"``).
        mels: Add the log-mel frames of each crop to the batches (as ``AudioFolder``).
        n_mels: Mel bands of ``mels``.
        n_fft: FFT size of ``mels``.
        hop_length: Samples per mel frame.
        seed: Seed of the clips and of the training crops' offsets.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        clip_seconds: float = 1.0,
        num_clips: int = 400,
        val_clips: int = 40,
        crop_length: int = 4000,
        batch_size: int = 8,
        steps_per_epoch: int = 200,
        label: Literal["instrument", "note"] = "instrument",
        mels: bool = False,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        predict_samples: int = 8,
    ) -> None:
        super().__init__()
        self._init_common(
            sample_rate, crop_length, batch_size, steps_per_epoch, mels, n_mels, n_fft, hop_length, seed,
            num_workers, predict_samples,
        )  # fmt: skip
        if num_clips < 1 or val_clips < 1:
            raise ConfigError(f"{_KEY}: num_clips={num_clips} and val_clips={val_clips} must be at least 1")
        samples = int(round(clip_seconds * sample_rate))
        if crop_length + 1 > samples:
            raise ConfigError(
                f"{_KEY}.crop_length={crop_length}: crops of crop_length + 1 samples do not fit clips of "
                f"{clip_seconds} s at {sample_rate} Hz ({samples} samples): lower crop_length or raise "
                "clip_seconds"
            )
        self.clip_seconds, self.num_clips, self.val_clips, self.label = (
            clip_seconds,
            num_clips,
            val_clips,
            label,
        )
        if label == "instrument":
            self.class_names: list[str] = list(INSTRUMENTS)
        else:
            self.class_names = [note_name(LOWEST_NOTE + i) for i in range(NUM_NOTES)]
        self.num_classes: int = len(self.class_names)
        # (instrument, note index) of every clip: train then validation.
        self.meta: Optional[np.ndarray] = None
        self.clips: Optional[_Clips] = None

    def _generate(self) -> tuple[_Clips, np.ndarray]:
        waves, meta = [], []
        for split, count in ((0, self.num_clips), (1, self.val_clips)):
            for i in range(count):
                rng = np.random.default_rng((self.seed, split, i))
                instrument, note = i % len(INSTRUMENTS), int(rng.integers(NUM_NOTES))
                waves.append(
                    synth_note(
                        INSTRUMENTS[instrument], LOWEST_NOTE + note, self.sample_rate, self.clip_seconds, rng
                    )
                )
                meta.append((instrument, note))
        data = np.concatenate(waves)  # (N,)
        return _Clips([w.size for w in waves], data=data), np.asarray(meta, dtype=np.int64)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.clips, self.meta = self._generate()
        labels = self.meta[:, 0] if self.label == "instrument" else self.meta[:, 1]
        n = self.num_clips
        self._build(self.clips, labels, np.arange(n), np.arange(n, n + self.val_clips))
