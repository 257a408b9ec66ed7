"""Periodicity of audio: how strongly a waveform repeats itself at a pitch period, frame by frame.

A pitched note (a flute, a string, a voiced vowel) repeats every period P = sample_rate / f0
samples, so a frame of it correlates with itself shifted by P (or by a multiple of P); noise, and
a waveform that follows the loudness of a note but has lost its pitch, do not. The score of a
frame is the largest normalised cross-correlation between the frame and the same stretch of audio
shifted by a lag in the pitch range:

    r(l) = sum_n x[s + n] x[s + n + l] / sqrt(sum_n x[s + n]^2 sum_n x[s + n + l]^2),
    score = max over l in [sample_rate / f_max, sample_rate / f_min] of r(l),

the "normalised cross-correlation function" of pitch trackers (RAPT, Talkin 1995; the YIN paper's
eq. 1 is the unnormalised form), taken without their refinements (no octave-error correction, no
interpolation between lags), since only the height of the peak is used here. A pure tone scores
1; white noise of a 512-sample frame scores about 0.12 (the largest of ~180 correlations of
standard deviation 1/sqrt(512), about 2.7 of them). Frames quieter than ``min_rms`` are left out:
silence and the tails of decays say nothing about pitch.

The lowest lag is sample_rate / f_max (default 400 Hz: 20 samples at 8 kHz), well above one
sample, because noise whose energy sits below a few hundred Hz (what an untrained audio model
draws) correlates strongly at lags of a few samples; a note above f_max still scores through
its period's multiples that fall in the range (C5, 523 Hz: two periods, 30.6 samples at 8 kHz).

Used by ``benchmarks/wavenet_notes_pitch.py`` to tell WaveNet samples that are notes from ones
that are only loud noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Periodicity:
    """Per-frame periodicity of one waveform (``periodicity``).

    Attributes:
        scores: (F,) the best normalised correlation of each voiced frame, in [-1, 1].
        voiced: the number F of frames at least ``min_rms`` loud.
        frames: the number of frames looked at.
    """

    scores: Tensor
    voiced: int
    frames: int

    @property
    def mean(self) -> float:
        """Mean score over the voiced frames (NaN when none is voiced)."""
        return float(self.scores.mean()) if self.voiced else math.nan


def periodicity(
    wave: Tensor,
    sample_rate: int,
    *,
    f_min: float = 40.0,
    f_max: float = 400.0,
    frame: int = 512,
    hop: int = 256,
    min_rms: float = 0.02,
) -> Periodicity:
    """Frame-wise periodicity of a mono waveform (module docstring).

    Args:
        wave: (T,) float waveform in [-1, 1].
        sample_rate: Hz of ``wave``.
        f_min, f_max: the pitch range searched, Hz: lags sample_rate / f_max .. sample_rate / f_min.
        frame: samples N correlated per frame.
        hop: samples between frame starts.
        min_rms: frames whose RMS is below this are not voiced and not scored.

    Returns:
        ``Periodicity`` of the frames that fit with their largest lag.
    """
    if wave.dim() != 1:
        raise ValueError(f"periodicity: wave must be (T,) mono samples, got shape {tuple(wave.shape)}")
    if not 0 < f_min < f_max:
        raise ValueError(f"periodicity: need 0 < f_min < f_max, got f_min={f_min}, f_max={f_max}")
    lo = max(1, int(math.floor(sample_rate / f_max)))
    hi = max(lo + 1, int(math.ceil(sample_rate / f_min)))
    x = wave.detach().to("cpu", torch.float64)
    span = frame + hi  # samples a frame needs with its largest lag
    if x.numel() < span:
        return Periodicity(torch.zeros(0, dtype=torch.float64), 0, 0)
    windows = x.unfold(0, span, hop)  # (F, frame + hi)
    head = windows[:, :frame]  # (F, N)
    loud = head.pow(2).mean(1).sqrt() >= min_rms  # (F,)
    head, windows = head[loud], windows[loud]
    if head.shape[0] == 0:
        return Periodicity(torch.zeros(0, dtype=torch.float64), 0, int(loud.numel()))
    # (F, L, N): the frame shifted by each lag, as views of the window
    shifted = windows.unfold(1, frame, 1)[:, lo : hi + 1]
    dots = torch.einsum("fn,fln->fl", head, shifted)  # (F, L)
    energy = head.pow(2).sum(1, keepdim=True) * shifted.pow(2).sum(2)  # (F, L)
    r = dots / energy.clamp_min(1e-24).sqrt()
    best = r.max(1).values  # (F,)
    return Periodicity(best, int(best.numel()), int(loud.numel()))
