"""``ProceduralNotes``: an offline synthetic audio set generated in memory from a seed, and its note
synthesiser ``synth_note``.

Single notes of four instruments over two octaves (C3 .. C5): a breathy flute with a steep harmonic
rolloff, a clarinet of odd harmonics (a cylindrical bore), a bell of inharmonic partials (Risset
1969, "An Introductory Catalogue of Computer Synthesized Sounds", #430) and a plucked string whose
high harmonics decay first, with attack / decay / sustain / release envelopes, vibrato and a little
noise. Clips are labelled by instrument or by note, so class-conditional models can be asked for
one; batches, crops and ``decode`` are those of every audio data module (``lit_genai.data.audio.base``).

Shapes: T samples, K partials, N samples of all clips.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from lit_genai.data.audio.base import KEY, AudioSettings, AudioTokens
from lit_genai.data.audio.crops import Clips
from lit_genai.errors import ConfigError

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


class ProceduralNotes(AudioTokens):
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
        super().__init__(AudioSettings.pick(locals()))  # the arguments every audio data module has
        if num_clips < 1 or val_clips < 1:
            raise ConfigError(f"{KEY}: num_clips={num_clips} and val_clips={val_clips} must be at least 1")
        samples = int(round(clip_seconds * sample_rate))
        if crop_length + 1 > samples:
            raise ConfigError(
                f"{KEY}.crop_length={crop_length}: crops of crop_length + 1 samples do not fit clips of "
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
        self.clips: Optional[Clips] = None

    def _generate(self) -> tuple[Clips, np.ndarray]:
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
        return Clips([w.size for w in waves], data=data), np.asarray(meta, dtype=np.int64)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.clips, self.meta = self._generate()
        labels = self.meta[:, 0] if self.label == "instrument" else self.meta[:, 1]
        n = self.num_clips
        self._build(self.clips, labels, np.arange(n), np.arange(n, n + self.val_clips))
