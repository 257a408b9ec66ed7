"""The gpt2 token stream of ``CharText`` (``lit_genai.data.text``) on disk: one flat uint16 file,
written once and memory-mapped afterwards (karpathy/nanoGPT, ``data/openwebtext/prepare.py``'s
``train.bin``).

As nanoGPT, every document is ``encode_ordinary(text)`` followed by ``<|endoftext|>`` (``eot_token``,
50256) and all documents form one stream. The file is ``<folder>/.lit_genai_tokens/<digest>.bin``
next to the data (``root``, or the folder of / named by ``path``); the digest covers the tokenizer
and the files' names, sizes and modification times (or the text itself, for a corpus with no file).
It is written document by document to a temporary name, then renamed, so readers see the whole file
or none. Later runs map it with ``np.memmap(mode="r")`` and each window is converted to int64 on its
own (``TokenFile``), so the corpus never has to fit in memory.

Shape legend: N tokens of the stream, N_d tokens of document d, n tokens of a slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from lit_genai.atomic import atomic_file
from lit_genai.data.tokenizers import as_bytes

CACHE_FOLDER = ".lit_genai_tokens"


def cache_folder(path: Optional[str], root: str) -> Path:
    """``.lit_genai_tokens`` in ``root`` (no ``path``), in the folder ``path`` names, or beside it.

    Args:
        path: The corpus' file or folder, or None (a named corpus).
        root: The named corpus' folder.
    """
    if path is None:
        return Path(root) / CACHE_FOLDER
    folder = Path(path)
    return (folder if folder.is_dir() else folder.parent) / CACHE_FOLDER


def stream_digest(
    tokenizer: str, encoding: Any, documents: Optional[Sequence[Union[str, bytes]]], files: Sequence[str]
) -> str:
    """The token file's name (16 hex digits): the tokenizer, the documents' text when given (the help
    topics, which have no file), and the files' names, sizes and modification times.

    Args:
        tokenizer: The tokenizer's name (``"gpt2"``).
        encoding: The ``tiktoken`` encoding (its ``n_vocab`` and ``eot_token`` enter the digest).
        documents: The documents already in memory, or None (read from ``files`` when written).
        files: The documents' file names (existing files only, unless ``documents`` is given).
    """
    digest = hashlib.sha256(f"{tokenizer}:{encoding.n_vocab}:{encoding.eot_token}".encode())
    if documents is not None:
        digest.update(b"".join(as_bytes(d) for d in documents))
    for name in files:
        stat = Path(name).stat()
        digest.update(f"\0{Path(name).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def write_token_file(file: Path, encoding: Any, documents: Iterable[str]) -> Path:
    """Write the stream (each document's ``encode_ordinary`` ids, then ``eot_token``) to ``file`` as
    flat uint16, document by document, unless it exists; return ``file``.

    Args:
        file: ``cache_folder(...) / f"{stream_digest(...)}.bin"``.
        encoding: The ``tiktoken`` encoding (at most 2**16 ids).
        documents: The documents' text, in order; may be a generator (read one file at a time), which
            is not consumed when the file exists.
    """
    if file.is_file():
        return file
    with atomic_file(file) as out:  # readers see the whole file or none
        for document in documents:
            ids = [*encoding.encode_ordinary(document), encoding.eot_token]
            np.asarray(ids, dtype=np.uint16).tofile(out)  # (N_d + 1,)
    return file


class TokenFile:
    """A flat uint16 token file (N,), mapped with ``np.memmap(mode="r")`` on first use (in each worker
    process: the map itself is not pickled); slices are int64 tensors, so only a window is ever
    converted.

    Args:
        path: The file written by ``write_token_file``.
    """

    def __init__(self, path: Path) -> None:
        self.path, self._map = path, None

    def __len__(self) -> int:
        return self.path.stat().st_size // 2

    def __getitem__(self, index: slice) -> Tensor:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint16, mode="r")
        return torch.from_numpy(self._map[index].astype(np.int64))  # (n,)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}
