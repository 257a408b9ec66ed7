"""``AudioFolder``: a folder of audio files (or a named public speech set) as mu-law token crops for
WaveNet-style models (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio").

Files: WAV / FLAC / OGG (searched recursively, hidden folders skipped) read with ``soundfile``
(libsndfile; no FFmpeg), or a named set (``name: ljspeech`` or ``speech_commands``, fetched into
``root`` only with ``download: true``; ``lit_genai.data.audio.download``). The file list and the
headers (rates, lengths) are read in ``__init__``, the audio in ``prepare_data`` / ``setup``.

Waveform cache: every file is mixed to mono, resampled to ``sample_rate``, trimmed of leading and
trailing silence and optionally peak-normalised, once; the results are written back to back as one
float16 file, ``<cache>/<digest>.f16`` (the digest covers the files' paths, sizes and modification
times and these settings), then their lengths as ``<digest>.lengths.npy``, each to a unique
temporary name renamed into place (``lit_genai.atomic``; the lengths file last, so its presence
means the cache is whole). Later runs and worker processes map it with ``np.memmap(mode="r")``, so a
set larger than memory trains.

Splits: validation (and test) files are chosen by file (a permutation of the files ordered by a hash
of their relative paths, so the split depends on the file names only and adding a file moves few
others); ``val_fraction`` of them, at least one when there are two or more files. Training draws
random crops of every training file, validation consecutive crops of each validation file
(``lit_genai.data.audio.crops``). Labels: the parent folder's class with ``labels: folder``, else 0.
Batches and ``decode``: ``lit_genai.data.audio.base``.

Shapes: T samples, n files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import soundfile
from lightning.pytorch.utilities import rank_zero_warn

from lit_genai.atomic import atomic_file
from lit_genai.data.audio.base import KEY, AudioSettings, AudioTokens, error_reason
from lit_genai.data.audio.crops import Clips
from lit_genai.data.audio.download import NAMED_SETS, named_set_folder
from lit_genai.data.audio.dsp import MAX_RESAMPLE_FACTOR, resample, resample_factors, trim_silence
from lit_genai.data.checks import Folder
from lit_genai.errors import ConfigError, DataNotFoundError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioFolder(AudioTokens):
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
        short_files: A file with fewer than ``crop_length + 1`` samples (after trimming): ``"pad"``
            (the default) zero-pads its one crop at the end, i.e. with silence (in training it is
            drawn as often as one start of a longer file); ``"skip"`` leaves it out; ``"error"`` stops
            with its name. One warning counts the short files; a file with no sound left after
            trimming is left out in any case. Padding is the default because speech corpora are
            made of short utterances (a spoken digit is half a second): skipping would drop most of
            such a set, and a word followed by silence is what speech sounds like anyway.
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
        short_files: Literal["error", "skip", "pad"] = "pad",
        cache_dir: Optional[str] = None,
        seed: int = 0,
        num_workers: int = 0,
        predict_samples: int = 8,
    ) -> None:
        super().__init__(AudioSettings.pick(locals()))  # the arguments every audio data module has
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"{KEY}.val_fraction={val_fraction} must be in [0, 1)")
        if peak_normalize is not None and not 0 < peak_normalize <= 1:
            raise ConfigError(f"{KEY}.peak_normalize={peak_normalize} must be in (0, 1], or null")
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
                    f"{KEY}.labels=folder labels each file by its parent folder, but {loose[0]} sits in the "
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
        return f"{KEY}.name={self.name}" if self.name is not None else f"{KEY}.root={self.root}"

    def _audio_folder(self) -> Path:
        root = Path(self.root).expanduser()
        if self.name is not None:
            return named_set_folder(self.name, root, self.download)
        if not root.is_dir():
            raise DataNotFoundError(f"{KEY}.root={self.root!r}: no such folder of audio files")
        return root

    def _list_files(self) -> list[Path]:
        left_out = NAMED_SETS[self.name].left_out if self.name is not None else ()
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
                    f"{file} is not a readable audio file ({error_reason(err)}): remove or re-encode it "
                    f"({self._source()})"
                ) from err
            try:
                up, down = resample_factors(info.samplerate, self.sample_rate)
            except ValueError as err:
                raise ConfigError(
                    f"{KEY}.sample_rate={self.sample_rate}: {file} ({info.samplerate} Hz) cannot be "
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
            f"fewer than {KEY}.crop_length + 1 = {self.crop_length + 1}: lower crop_length, set "
            f"{KEY}.short_files pad or skip, or remove the file"
        )

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train files, val files): the ``val_fraction`` of the files with the smallest hashes of their
        relative paths (a permutation that depends on the names only)."""
        n = len(self.files)
        if self.val_fraction == 0:
            return np.arange(n), np.zeros(0, dtype=np.int64)
        if n < 2:
            raise ConfigError(
                f"{KEY}.val_fraction={self.val_fraction}: validation is split by file, and "
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

    def write_folders(self) -> list[Folder]:
        """The waveform cache's folder when the cache is still to be written, which the command line
        checks before anything runs (``lit_genai.cli_checks.check_writable``)."""
        data_file, lengths_file = self._cache_paths()
        if data_file.is_file() and lengths_file.is_file():
            return []
        where = f"{KEY}.cache_dir" if self.cache_dir is not None else f"in {KEY}.root; set {KEY}.cache_dir"
        return [
            Folder(
                f"the audio cache folder ({where})",
                data_file.parent,
                "pass --data.cache_dir <a writable folder>",
            )
        ]

    def load(self, index: int) -> np.ndarray:
        """File ``index`` as the model sees it: mono, at ``sample_rate``, trimmed, normalised; (T,)
        float32."""
        file = self.files[index]
        try:
            data, rate = soundfile.read(str(file), dtype="float32", always_2d=True)  # (T, C)
        except (soundfile.SoundFileError, RuntimeError, OSError) as err:
            raise ConfigError(
                f"{file} is not a readable audio file ({error_reason(err)}): remove or re-encode it "
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
        lengths = []
        with atomic_file(data_file) as out:
            for i in range(len(self.files)):
                wave = self.load(i)
                wave.astype(np.float16).tofile(out)
                lengths.append(wave.size)
        with atomic_file(lengths_file) as out:  # last: its presence means the cache is whole
            np.save(out, np.asarray(lengths, dtype=np.int64))
        return data_file, np.asarray(lengths, dtype=np.int64)

    # ------------------------------------------------------------------ splits
    def prepare_data(self) -> None:
        self._write_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        data_file, lengths = self._write_cache()
        clips = Clips(lengths, path=data_file)
        short = [i for i in range(len(self.files)) if lengths[i] < self.crop_length + 1]
        when = f" after trimming silence below {self.trim_db} dB" if self.trim_db is not None else ""
        if short and self.short_files == "error":
            raise self._short(self.files[short[0]], int(lengths[short[0]]), when)
        silent = {i for i in short if lengths[i] == 0}  # no sound left to pad: left out in any case
        left_out = set(short) if self.short_files == "skip" else silent
        train = [int(i) for i in self.train_files if i not in left_out]
        val = [int(i) for i in self.val_files if i not in left_out]
        if not train or (self.val_fraction > 0 and not val):
            split = "training" if not train else "validation"
            if self.short_files == "skip":
                problem = f"is left with crop_length + 1 = {self.crop_length + 1} samples{when}"
                fix = f"lower crop_length, set {KEY}.short_files pad, or add files"
            else:
                problem = f"has any sound{when}"
                fix = f"lower {KEY}.trim_db (null keeps the files whole), or add files"
            raise ConfigError(f"{self._source()}: no {split} file {problem}: {fix}")
        if short:
            rank_zero_warn(self._short_notice(len(short), len(silent), when))  # one line for them all
        self._build(clips, self.file_labels, train, val)

    def _short_notice(self, short: int, silent: int, when: str) -> str:
        """The one warning about files shorter than a crop: how many, and what becomes of them."""
        notice = (
            f"{self._source()}: {short} of {len(self.files)} files are shorter than crop_length + 1 = "
            f"{self.crop_length + 1} samples{when}"
        )
        if self.short_files == "skip":
            return f"{notice} and are left out ({KEY}.short_files=skip)"
        fates = []
        if short > silent:
            fates.append(
                f"{short - silent} are zero-padded at their end ({KEY}.short_files=pad; skip leaves them out)"
            )
        if silent:
            fates.append(f"{silent} have no sound left and are left out")
        return f"{notice}: {', '.join(fates)}"

    def identity(self) -> dict[str, Any]:
        """``AudioTokens.identity`` with ``root`` as an absolute path and a digest of the files."""
        out = super().identity()
        out.pop("cache_dir")
        out["root"] = str(Path(self.root).expanduser().resolve())
        out["content"] = self._digest
        return out
