"""Audio signal processing, pure functions (tensors or arrays in, the same out; no file, no state).

- ``mu_law_encode`` / ``mu_law_decode``: WaveNet eq. (1) (van den Oord et al. 2016, "WaveNet: A
  Generative Model for Raw Audio"), f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu) with mu = 255,
  quantised to 256 classes by rounding to the nearest bin, as
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

Shapes: B batch, T samples, F frames, K frequency bins, M mel bands.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch import Tensor

MU = 255
NUM_CLASSES = MU + 1  # mu-law token ids
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
