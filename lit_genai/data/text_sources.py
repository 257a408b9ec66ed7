"""Text corpora for ``CharText`` (``lit_genai.data.text``): where the documents come from and how a file
is read.

- Tiny Shakespeare (karpathy/char-rnn, as in karpathy/nanoGPT's ``data/shakespeare_char``): one file,
  fetched once with ``download_tiny_shakespeare`` (written to a temporary name, then renamed).
- The Python standard library's help topics (``pydoc_data.topics``): about 80 topics, always offline.
- A text file, or a folder whose ``*.txt`` files are the documents (sorted by name).

A document is read as its exact characters (UTF-8, no newline translation) or, for the byte
tokenizer, as its bytes.

Shape legend: none (strings, bytes and paths only).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Optional, Union

from lit_genai.atomic import atomic_file
from lit_genai.errors import ConfigError, DataNotFoundError

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_FILE = "tinyshakespeare.txt"
_KEY = "data.init_args"


def pydoc_topics() -> dict[str, str]:
    """The standard library's help topics (``pydoc_data.topics.topics``) in sorted key order: topic
    name (``"for"``, ``"string-methods"``, ...) -> its text; about 80 topics, offline on any Python."""
    from pydoc_data.topics import topics

    return {key: topics[key] for key in sorted(topics)}


def pydoc_topics_text() -> str:
    """The help topics joined in sorted key order with one newline between topics: about 465k
    characters."""
    return "\n".join(pydoc_topics().values())


def download_tiny_shakespeare(file: Path) -> None:
    """Fetch Tiny Shakespeare into ``file`` (written to a temporary name, then renamed: readers and
    concurrent downloads see the whole file or none).

    Args:
        file: Where the text goes (its folder is created if needed).
    """
    try:
        with (
            urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=60) as response,
            atomic_file(file) as out,
        ):
            out.write(response.read())
    except OSError as err:  # URLError (no network) and HTTPError are OSErrors
        raise DataNotFoundError(
            f"Downloading Tiny Shakespeare into {str(file)!r} failed ({err}). Without internet, fetch "
            f"{TINY_SHAKESPEARE_URL} elsewhere and pass --data.path to it (or put it at {str(file)!r})."
        ) from err


def tiny_shakespeare_file(path: Optional[str], root: str, download: bool) -> Path:
    """The Tiny Shakespeare file: ``path`` if given, else ``root``/tinyshakespeare.txt, fetched first
    when missing and ``download`` is set; ``DataNotFoundError`` when it is not there.

    Args:
        path: A local copy of the file, or None.
        root: Folder holding (or receiving) the file when ``path`` is None.
        download: Fetch the file into ``root`` if missing (only when ``path`` is None).
    """
    file = Path(path) if path is not None else Path(root) / TINY_SHAKESPEARE_FILE
    if not file.is_file() and download and path is None:
        download_tiny_shakespeare(file)
    if not file.is_file():
        raise DataNotFoundError(
            f"Tiny Shakespeare not found at {str(file)!r}: pass --data.download true (needs "
            f"internet) or --data.path to a local copy of {TINY_SHAKESPEARE_URL}"
        )
    return file


def text_files(path: str) -> list[Path]:
    """The documents ``path`` names: the file itself, or a folder's ``*.txt`` files sorted by name.

    Args:
        path: A text file or a folder of ``.txt`` files (``data.init_args.path``).
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.txt"))
        if not files:
            raise DataNotFoundError(f"No .txt files in the folder {path!r} ({_KEY}.path)")
        return files
    if root.is_file():
        return [root]
    raise DataNotFoundError(f"{_KEY}.path={path!r}: no such file or folder")


def read_document(file: Path, as_bytes: bool, source: str) -> Union[str, bytes]:
    """A file's bytes, or its exact characters as UTF-8 (no newline translation).

    Args:
        file: The document.
        as_bytes: Return the bytes (the byte tokenizer) instead of the decoded text.
        source: The corpus setting, for error messages (``data.init_args.path=...``).
    """
    data = file.read_bytes()
    if not data:
        raise ConfigError(f"{file} is empty ({source}): give a file with text in it")
    if as_bytes:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{file} is not UTF-8 at byte offset {err.start} ({err.reason}): pass "
            f"--data.tokenizer byte, or re-encode the file as UTF-8"
        ) from err
