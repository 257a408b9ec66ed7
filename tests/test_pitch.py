"""Periodicity of audio (metrics/pitch.py): pitched notes score near 1, noise with a note's loudness
does not, silence is not scored."""

import math

import numpy as np
import pytest
import torch

from lit_genai.data.audio import synth_note
from lit_genai.metrics.pitch import periodicity

SR = 8000


def tone(hz: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return amplitude * torch.sin(2 * math.pi * hz * t)


@pytest.mark.parametrize("hz", [65.0, 130.8, 261.6, 523.3, 1046.5])
def test_a_pure_tone_scores_one_at_any_pitch_even_above_f_max(hz):
    # 1046.5 Hz: no lag of 20..200 samples is a whole period at 8 kHz, yet 65 periods come within a
    # 40th of a sample of a multiple of the 7.64-sample period
    p = periodicity(tone(hz), SR)
    assert p.voiced == p.frames > 20
    assert p.mean > 0.98


def test_the_score_is_the_normalised_correlation_at_the_best_lag():
    wave = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = periodicity(wave, SR, frame=256, hop=1000, f_min=100, f_max=400, min_rms=0)
    # by hand: lags 20 .. 80, frames at 0 and 1000
    for f, s in enumerate((0, 1000)):
        x = wave[s : s + 256]
        r = [
            float((x @ wave[s + lag : s + lag + 256]) / (x.norm() * wave[s + lag : s + lag + 256].norm()))
            for lag in range(20, 81)
        ]
        assert p.scores[f].item() == pytest.approx(max(r), abs=1e-12)


def test_loud_noise_with_a_notes_envelope_scores_low_and_a_noisy_note_high():
    g = torch.Generator().manual_seed(0)
    envelope = torch.exp(-torch.arange(SR, dtype=torch.float64) / 3000)
    noise = periodicity(0.5 * envelope * torch.randn(SR, generator=g, dtype=torch.float64), SR)
    assert noise.voiced > 10 and noise.mean < 0.25
    hum = torch.sin(2 * math.pi * 220 * torch.arange(SR) / SR)
    noisy_note = 0.5 * envelope * (hum + 0.2 * torch.randn(SR, generator=g))
    assert periodicity(noisy_note, SR).mean > 0.9


@pytest.mark.parametrize(
    "instrument, floor", [("flute", 0.95), ("clarinet", 0.95), ("pluck", 0.95), ("bell", 0.4)]
)
def test_the_procedural_notes_score_as_notes(instrument, floor):
    # the bell's partials are inharmonic, so no lag repeats all of them: it scores lower
    for midi in (48, 60, 72):
        note = synth_note(instrument, midi, SR, 1.0, np.random.default_rng(midi))
        p = periodicity(torch.from_numpy(note), SR)
        assert p.voiced > 10
        assert p.mean > floor


def test_silence_and_short_clips_score_nothing():
    quiet = periodicity(torch.full((SR,), 1e-3), SR)
    assert quiet.voiced == 0 and quiet.frames > 0 and math.isnan(quiet.mean)
    short = periodicity(tone(220, seconds=0.05), SR)  # 400 samples < frame + 200
    assert short.voiced == short.frames == 0


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match=r"\(T,\) mono"):
        periodicity(torch.zeros(2, SR), SR)
    with pytest.raises(ValueError, match="f_min < f_max"):
        periodicity(tone(220), SR, f_min=400, f_max=40)
