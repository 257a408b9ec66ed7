"""The named public speech sets ``AudioFolder`` reads (``name: ljspeech`` or ``speech_commands``):
where they come from, fetching and unpacking them into ``root``.

A set is fetched only with ``download: true`` (into ``root``, by ``__init__``, because the file list
is needed before the model is built); an archive already in ``root`` is unpacked without network.
Archives and unpacked folders appear whole or not at all: the archive is written to a unique
temporary file and renamed (``lit_genai.atomic``), the archive is unpacked into a unique
temporary folder of ``root`` whose audio folder is then renamed into place, so concurrent runs (one
``prepare_data`` per node on a shared folder) and readers never see half a set.

Sets: LJSpeech-1.1 (Ito & Johnson 2017, "The LJ Speech Dataset"), Speech Commands v0.02 (Warden
2018, "Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition").

Shape legend: none (files only).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple, Optional

from lit_genai.atomic import PARTIAL_SUFFIX, atomic_file
from lit_genai.data.audio.base import KEY, error_reason
from lit_genai.errors import DataNotFoundError

LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"


class NamedSet(NamedTuple):
    """Where a named set comes from and where it lands in ``root``."""

    url: str
    archive: str  # the archive's file name in root
    folder: str  # the audio folder, relative to root
    inner: Optional[str]  # the folder the archive unpacks to (None: its members sit at the top level)
    size: str  # the download's size, for the message
    left_out: tuple[str, ...]  # folders of the set that are not clips


NAMED_SETS: dict[str, NamedSet] = {
    "ljspeech": NamedSet(
        LJSPEECH_URL, "LJSpeech-1.1.tar.bz2", "LJSpeech-1.1/wavs", "LJSpeech-1.1", "2.6 GB", ()
    ),
    "speech_commands": NamedSet(
        SPEECH_COMMANDS_URL,
        "speech_commands_v0.02.tar.gz",
        "SpeechCommands/speech_commands_v0.02",
        None,
        "2.3 GB",
        ("_background_noise_",),
    ),
}


def fetch(url: str, file: Path) -> None:
    """Download ``url`` into ``file`` (a unique temporary name beside it, then renamed)."""
    with urllib.request.urlopen(url, timeout=60) as response, atomic_file(file) as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def extract(archive: Path, root: Path, target: Path, inner: Optional[str]) -> None:
    """Unpack ``archive`` into a unique temporary folder of ``root``, then rename its audio folder to
    ``target`` (readers and concurrent runs see the whole folder or none)."""
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{archive.name}.", suffix=PARTIAL_SUFFIX))
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


def named_set_folder(name: str, root: Path, download: bool) -> Path:
    """The audio folder of the named set in ``root``: unpacked from an archive in ``root`` if needed,
    fetched first with ``download``; else a ``DataNotFoundError`` saying how to get it."""
    spec = NAMED_SETS[name]
    target = root / spec.folder
    if not target.is_dir() and (root / spec.archive).is_file():
        _unpack(name, root / spec.archive, root, target)
    if not target.is_dir() and download:
        try:
            fetch(spec.url, root / spec.archive)
        except OSError as err:  # URLError (no network) and HTTPError are OSErrors
            raise DataNotFoundError(
                f"{KEY}.name={name}: downloading {spec.url} into {str(root)!r} failed ({err}); without "
                f"internet, fetch it elsewhere and put it (or its unpacked contents) there"
            ) from err
        _unpack(name, root / spec.archive, root, target)
    if not target.is_dir():
        raise DataNotFoundError(
            f"{KEY}.name={name}: {str(target)!r} not found: pass --data.download true "
            f"(needs internet, {spec.size}) or fetch {spec.url} elsewhere and put it, or its unpacked "
            f"contents, in {str(root)!r} ({KEY}.root)"
        )
    return target


def _unpack(name: str, archive: Path, root: Path, target: Path) -> None:
    try:
        extract(archive, root, target, NAMED_SETS[name].inner)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataNotFoundError(
            f"{KEY}.name={name}: unpacking {str(archive)!r} failed ({error_reason(err)}): delete it and "
            f"download it again ({NAMED_SETS[name].url})"
        ) from err
