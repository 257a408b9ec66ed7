"""Raw audio as mu-law tokens for WaveNet-style models (van den Oord et al. 2016, "WaveNet: A Generative
Model for Raw Audio"): two data modules and the signal processing they share.

- ``AudioFolder`` (``folder.py``): a folder of WAV / FLAC / OGG files, or a named public speech set
  (``download.py``: LJSpeech, Speech Commands), processed once into a float16 waveform cache.
- ``ProceduralNotes`` (``notes.py``): single synthetic notes of four instruments, generated in
  memory from a seed (``synth_note``).
- ``base.py``: what both share (``AudioSettings``, ``AudioTokens``: loaders, ``decode`` to
  ``lit_genai.media.Waveforms``); ``crops.py``: the clips and the training / validation crops;
  ``dsp.py``: mu-law (WaveNet eq. 1), resampling, silence trimming and log-mel frames, pure.

The YAML names them by these exports: ``class_path: lit_genai.data.audio.AudioFolder`` /
``lit_genai.data.audio.ProceduralNotes``.

Batches (docs/architecture.md, "Batches"): ``(tokens, labels[, mels])``, tokens (B, T + 1) int64
mu-law ids, labels (B,) int64, mels (B, M, F) float32.

Shapes: B batch, T crop_length, M mel bands, F frames.
"""

from lit_genai.data.audio.base import AudioSettings, AudioTokens
from lit_genai.data.audio.download import LJSPEECH_URL, NAMED_SETS, SPEECH_COMMANDS_URL
from lit_genai.data.audio.dsp import (
    MAX_RESAMPLE_FACTOR,
    MU,
    NUM_CLASSES,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    mu_law_decode,
    mu_law_encode,
    num_frames,
    resample,
    resample_factors,
    trim_silence,
)
from lit_genai.data.audio.folder import AUDIO_EXTENSIONS, AudioFolder
from lit_genai.data.audio.notes import (
    INSTRUMENTS,
    LOWEST_NOTE,
    NUM_NOTES,
    ProceduralNotes,
    midi_to_hz,
    note_name,
    synth_note,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioFolder",
    "AudioSettings",
    "AudioTokens",
    "INSTRUMENTS",
    "LJSPEECH_URL",
    "LOWEST_NOTE",
    "MAX_RESAMPLE_FACTOR",
    "MU",
    "NAMED_SETS",
    "NUM_CLASSES",
    "NUM_NOTES",
    "ProceduralNotes",
    "SPEECH_COMMANDS_URL",
    "hz_to_mel",
    "log_mel",
    "mel_filterbank",
    "mel_to_hz",
    "midi_to_hz",
    "mu_law_decode",
    "mu_law_encode",
    "note_name",
    "num_frames",
    "resample",
    "resample_factors",
    "synth_note",
    "trim_silence",
]
