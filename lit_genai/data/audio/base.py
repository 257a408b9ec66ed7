"""What the audio data modules (``AudioFolder``, ``ProceduralNotes``) share: their common settings,
checked once, the crops built from clips, the loaders and ``decode`` to the audio medium.

Batches (docs/architecture.md, "Batches"): ``(tokens, labels)``, tokens (B, T + 1) int64 mu-law ids
in [0, 256) with T = crop_length (the model reads tokens[:, :-1] and predicts tokens[:, 1:]),
labels (B,) int64; with ``mels`` a third element, mels (B, n_mels, ceil((T + 1) / hop_length))
float32, the log-mel frames of the crop itself (the local conditioning of WaveNet, van den Oord et
al. 2016, section 2.5). ``decode`` gives ``lit_genai.media.Waveforms`` at ``sample_rate`` (the audio
media route); ``predict_dataloader`` yields (B,) int64 sample indices.

Shapes: B batch, T crop_length, M mel bands, F frames.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional

import lightning as L
import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.data.audio.crops import Clips, FixedCrops, RandomCrops
from lit_genai.data.audio.dsp import NUM_CLASSES, log_mel, num_frames
from lit_genai.data.checks import check_counts
from lit_genai.data.decoders import AudioDecoder, decoder_state
from lit_genai.data.loaders import SplitLoaders
from lit_genai.errors import ConfigError
from lit_genai.media import Waveforms

KEY = "data.init_args"  # where the data module's arguments sit in the YAML, for error messages


def error_reason(err: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line user errors."""
    return (str(err).splitlines() or [type(err).__name__])[0]


@dataclass(frozen=True)
class AudioSettings:
    """The ``__init__`` arguments every audio data module has (their meaning: ``AudioFolder``'s
    docstring), checked when built: a bad value is a ``ConfigError`` naming its YAML key (the counts
    among them by ``AudioTokens.__init__``, ``lit_genai.data.checks``, which names the module too).

    Args:
        sample_rate: Hz of the clips and of the decoded samples.
        crop_length: T, the model's input length; crops hold T + 1 samples.
        batch_size: Crops per batch (also sample indices per predict batch).
        steps_per_epoch: Training batches per epoch.
        mels: Add each crop's log-mel frames to the batches.
        n_mels: Mel bands of ``mels``.
        n_fft: FFT size (and Hann window length) of ``mels``.
        hop_length: Samples per mel frame.
        seed: Seed of the training crops' offsets (and of generated clips).
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    sample_rate: int
    crop_length: int
    batch_size: int
    steps_per_epoch: int
    mels: bool
    n_mels: int
    n_fft: int
    hop_length: int
    seed: int
    num_workers: int
    predict_samples: int

    @classmethod
    def pick(cls, arguments: Mapping[str, Any]) -> AudioSettings:
        """The settings among a data module's ``__init__`` arguments (its ``locals()``), by name."""
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})

    def __post_init__(self) -> None:
        if self.sample_rate < 1:
            raise ConfigError(f"{KEY}.sample_rate={self.sample_rate} must be a positive number of Hz")
        if self.mels and not (1 <= self.hop_length <= self.n_fft and 1 <= self.n_mels <= self.n_fft // 2 + 1):
            raise ConfigError(
                f"{KEY}: mels need 1 <= hop_length <= n_fft and 1 <= n_mels <= n_fft // 2 + 1, got "
                f"hop_length={self.hop_length}, n_fft={self.n_fft}, n_mels={self.n_mels}"
            )


class AudioTokens(SplitLoaders, L.LightningDataModule):
    """The shared base of the audio data modules: attributes, crops, loaders and ``decode``.

    Args:
        settings: The common arguments, built by the subclass's ``__init__`` from its own (whose
            signature LightningCLI reads, so each subclass lists them itself).
    """

    epoch_indices = True  # training window e * n + i is drawn from a generator seeded by that index
    # One attribute per AudioSettings field (SplitLoaders declares batch_size, num_workers and
    # predict_samples): identity(), the command line's links (data.sample_rate -> model) and the
    # tests read them by name.
    sample_rate: int
    crop_length: int
    steps_per_epoch: int
    mels: bool
    n_mels: int
    n_fft: int
    hop_length: int
    seed: int

    def __init__(self, settings: AudioSettings) -> None:
        super().__init__()
        check_counts(
            type(self).__name__,
            crop_length=settings.crop_length,
            batch_size=settings.batch_size,
            steps_per_epoch=settings.steps_per_epoch,
            num_workers=settings.num_workers,
            predict_samples=settings.predict_samples,
        )
        for field in fields(settings):
            setattr(self, field.name, getattr(settings, field.name))
        self.modality = "audio"
        self.vocab_size: int = NUM_CLASSES
        self.block_size: int = settings.crop_length  # the model's input length; crops hold crop_length + 1
        self.sample_shape: tuple[int] = (settings.crop_length,)
        self.mel_frames: Optional[int] = (
            num_frames(settings.crop_length + 1, settings.hop_length) if settings.mels else None
        )
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @property
    def conditions(self) -> tuple[str, ...]:
        """The conditions its batches carry (docs/architecture.md, "Conditions"): ``label`` when it
        has classes, ``mels`` with ``mels: true``."""
        label = ("label",) if getattr(self, "num_classes", 0) > 0 else ()
        return (*label, *(("mels",) if self.mels else ()))

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

    def _build(self, clips: Clips, labels: np.ndarray, train: Sequence[int], val: Sequence[int]) -> None:
        mels, n = self._mel_function(), self.steps_per_epoch * self.batch_size
        self.train_set = RandomCrops(clips, labels, self.crop_length, train, self.seed, n, mels)
        self.val_set = FixedCrops(clips, labels, self.crop_length, val, mels)
        self.test_set = self.val_set

    # ------------------------------------------------------------------ the audio medium
    def decode(self, ids: Tensor) -> Waveforms:
        """Mu-law ids (B, T) (or one row (T,)) -> ``Waveforms`` (B, T) in [-1, 1] at ``sample_rate``."""
        return self.decoder(ids)

    @property
    def decoder(self) -> AudioDecoder:
        """What ``decode`` does, kept in checkpoints (``lit_genai.data.decoders``)."""
        return AudioDecoder(int(self.sample_rate))

    def state_dict(self) -> dict[str, Any]:
        """The media decoder, so a checkpoint decodes its samples without the recordings."""
        return decoder_state(self.decoder)

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
