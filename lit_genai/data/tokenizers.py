"""The three text tokenizers of ``CharText`` (``lit_genai.data.text``): character, byte and GPT-2 BPE
(karpathy/nanoGPT, ``data/shakespeare_char/prepare.py`` and ``data/openwebtext/prepare.py``).

- ``"char"``: the sorted set of the characters of the whole corpus (``vocabulary_of``): Tiny
  Shakespeare gives 65 symbols. The vocabulary is a list of characters; id i is ``vocabulary[i]``.
- ``"byte"``: the UTF-8 bytes, 256 ids, no vocabulary (per-id symbols would break multi-byte
  characters); decoding joins a row's bytes and decodes them with ``errors="replace"``.
- ``"gpt2"``: GPT-2's byte-pair encoding through ``tiktoken`` (an optional package; its first use
  downloads the BPE files once, then caches them under ``$TIKTOKEN_CACHE_DIR`` or a temporary
  folder), 50257 ids; encoding is ``encode_ordinary``, decoding the encoding's. The token stream's
  file on disk is ``lit_genai.data.token_file``. ``gpt2_encoding(folder)`` builds it offline from a
  local folder's ``vocab.json`` and ``merges.txt`` (a Hugging Face GPT-2 folder; or OpenAI's
  ``encoder.json`` and ``vocab.bpe``: the same files), as tiktoken's own ``gpt2`` definition does.

``caption_words`` splits a caption into lower-case words, for the word tokenizer of text conditions
over a data set's ``text_vocabulary`` (``lit_genai.data.shapes``).

Shape legend: B rows, T tokens of a row, N tokens of a document, V vocabulary size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from lit_genai.errors import ConfigError, DataNotFoundError

_KEY = "data.init_args"
_GPT2_HINT = (
    "pip install tiktoken; its first use needs internet once to fetch the GPT-2 BPE files "
    "(or set TIKTOKEN_CACHE_DIR to a folder holding them)"
)


# Word separators of captions: whitespace and the punctuation captions use between words (a comma
# above all), so "small," and "(small)" are the word "small" and a prompt ending in "." still parses.
_CAPTION_SEPARATORS = re.compile(r"[\s,;:.!?()\"]+")


def caption_words(text: str) -> list[str]:
    """A caption's words for a word tokenizer: lower case, split on whitespace and commas (and
    ``; : . ! ? ( ) "``), no empty words. ``"Blue background, red circle"`` ->
    ``["blue", "background", "red", "circle"]``."""
    return [w for w in _CAPTION_SEPARATORS.split(text.lower()) if w]


def vocabulary_of(texts: Sequence[str]) -> list[str]:
    """The sorted set of the characters of ``texts`` (the char tokenizer's vocabulary)."""
    return sorted(set().union(*(set(t) for t in texts)))


def char_index(vocabulary: Optional[list[str]]) -> Optional[dict[str, int]]:
    """Character -> id for a char vocabulary; None for the byte and gpt2 tokenizers (no vocabulary)."""
    return None if vocabulary is None else {s: i for i, s in enumerate(vocabulary)}


def gpt2_encoding(folder: Optional[str] = None) -> Any:
    """``tiktoken.get_encoding("gpt2")``, or one line saying how to get it; given ``folder``, GPT-2's
    BPE built from its local files (``gpt2_folder_files``), no download, cached per folder."""
    try:
        import tiktoken
    except ImportError as err:
        raise ConfigError(f"{_KEY}.tokenizer=gpt2 needs the tiktoken package: {_GPT2_HINT}") from err
    if folder is not None:
        return _local_gpt2(*_folder_key(folder))[0]
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # offline: requests' ConnectionError; a bad cached file: ValueError
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataNotFoundError(
            f"{_KEY}.tokenizer=gpt2: loading the GPT-2 BPE files failed ({reason}): {_GPT2_HINT}"
        ) from err


# The file names of a GPT-2 tokenizer folder: Hugging Face's, then OpenAI's (the same contents).
_GPT2_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
_FOLDER_KEY = f"{_KEY}.tokenizer_folder"
_ENDOFTEXT = "<|endoftext|>"


def gpt2_folder_files(folder: str) -> tuple[Path, Path]:
    """(vocabulary JSON, merges) of a GPT-2 tokenizer folder: ``vocab.json`` and ``merges.txt``, else
    ``encoder.json`` and ``vocab.bpe``; one ``ConfigError`` line when neither pair is there."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"{_FOLDER_KEY}={folder}: no such folder (a folder with GPT-2's vocab.json and merges.txt)"
        )
    for names in _GPT2_FILES:
        files = (root / names[0], root / names[1])
        if all(f.is_file() for f in files):
            return files
    missing = [name for name in _GPT2_FILES[0] if not (root / name).is_file()]
    raise ConfigError(
        f"{_FOLDER_KEY}={folder}: no {' or '.join(missing)} there; it needs GPT-2's vocab.json and "
        "merges.txt (a Hugging Face GPT-2 folder) or encoder.json and vocab.bpe"
    )


def gpt2_folder_digest(folder: str) -> str:
    """16 hex digits of the sha256 of a GPT-2 tokenizer folder's two files (``gpt2_folder_files``):
    another vocabulary under the same folder is another digest."""
    return _local_gpt2(*_folder_key(folder))[1]


def _folder_key(folder: str) -> tuple[str, str, tuple[int, ...]]:
    """The cache key of a folder's encoding: its two files' resolved paths, and their sizes and
    modification times (an edited file is read again)."""
    vocab, merges = gpt2_folder_files(folder)
    stats = vocab.stat(), merges.stat()
    stamp = tuple(n for s in stats for n in (s.st_size, s.st_mtime_ns))
    return str(vocab.resolve()), str(merges.resolve()), stamp


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte alphabet (``bytes_to_unicode`` of its ``encoder.py``), character -> byte, in
    the order of the single-byte ranks (tiktoken's ``data_gym_to_mergeable_bpe_ranks``)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


@functools.lru_cache(maxsize=8)
def _local_gpt2(vocab: str, merges: str, stamp: tuple[int, ...]) -> tuple[Any, str]:
    """(the ``tiktoken.Encoding`` "gpt2-local", the files' digest) of a folder (``_folder_key``).

    As tiktoken's own ``gpt2`` (``tiktoken_ext.openai_public``): its pattern, the ranks of
    ``tiktoken.load.data_gym_to_mergeable_bpe_ranks`` (the 256 bytes, then one per merge, checked
    against ``vocab.json``) and ``<|endoftext|>`` with the id ``vocab.json`` gives it, if any. The
    files are read here once, not through tiktoken's loader, which would copy them into its cache.
    One ``ConfigError`` line for files that are not GPT-2's BPE.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    where = f"{_FOLDER_KEY}={Path(vocab).parent}"
    names = f"{Path(vocab).name} and {Path(merges).name}"
    try:
        vocab_bytes, merges_bytes = Path(vocab).read_bytes(), Path(merges).read_bytes()
        ids, lines = json.loads(vocab_bytes), merges_bytes.decode("utf-8").splitlines()
    except (OSError, ValueError) as err:  # unreadable file, bad JSON or UTF-8
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{where}: cannot read {names} ({reason})") from None
    if not isinstance(ids, dict):
        raise ConfigError(f"{where}: {Path(vocab).name} is not a JSON object of token -> id")
    alphabet = _byte_alphabet()
    ranks = {bytes([b]): i for i, b in enumerate(alphabet.values())}  # the 256 single bytes
    try:
        for number, line in enumerate(lines, start=1):
            if not line.strip() or (number == 1 and line.startswith("#version")):
                continue
            first, second = line.split()  # ValueError: not two tokens
            ranks[bytes(alphabet[c] for c in first + second)] = len(ranks)  # KeyError: not the alphabet
        special = {k: ids.pop(k) for k in (_ENDOFTEXT, "<|startoftext|>") if k in ids}
        expected = {bytes(alphabet[c] for c in token): i for token, i in ids.items()}
    except (ValueError, KeyError) as err:
        reason = f"line {number} of {Path(merges).name} is {line!r}" if isinstance(err, ValueError) else ""
        reason = reason or f"a token has the character {err.args[0]!r}, not one of GPT-2's byte alphabet"
        raise ConfigError(f"{where}: {names} are not GPT-2's BPE files ({reason})") from None
    if ranks != expected:
        raise ConfigError(
            f"{where}: {names} do not agree ({len(ranks)} tokens from the bytes and merges, "
            f"{len(expected)} in {Path(vocab).name}, or other ids): use the two files of one tokenizer"
        )
    eot = special.get(_ENDOFTEXT)
    if eot is not None and (not isinstance(eot, int) or 0 <= eot < len(ranks)):
        raise ConfigError(f"{where}: {_ENDOFTEXT} has the id {eot!r}, not one after the BPE tokens")
    special = {} if eot is None else {_ENDOFTEXT: eot}
    encoding = tiktoken.Encoding(
        "gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens=special
    )
    digest = hashlib.sha256(vocab_bytes + b"\0" + merges_bytes).hexdigest()[:16]
    return encoding, digest


def as_bytes(document: Union[str, bytes]) -> bytes:
    """A document as bytes: text as UTF-8, bytes as they are."""
    return document.encode("utf-8") if isinstance(document, str) else bytes(document)


def document_ids(document: Union[str, bytes], vocabulary: Optional[list[str]], source: str) -> Tensor:
    """A whole document -> (N,) int64 ids: bytes as they are, characters by their vocabulary index
    (vectorised over the code points, so long corpora encode fast).

    Args:
        document: Bytes (no vocabulary) or text (char vocabulary).
        vocabulary: The char vocabulary, in any order (a checkpoint's need not be sorted), or None.
        source: The corpus setting, for error messages.
    """
    if vocabulary is None:
        return torch.from_numpy(np.frombuffer(document, dtype=np.uint8).astype(np.int64))  # (N,)
    codes = np.array([ord(c) for c in vocabulary], dtype=np.uint32)  # (V,)
    order = np.argsort(codes)  # (V,)
    points = np.frombuffer(document.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
    rank = np.searchsorted(codes[order], points).clip(max=len(codes) - 1)  # (N,)
    ids = order[rank]  # (N,)
    missing = codes[ids] != points
    if missing.any():  # only after load_state_dict with another vocabulary
        char = chr(int(points[missing.argmax()]))
        raise ConfigError(
            f"the checkpoint's vocabulary ({len(vocabulary)} symbols) lacks the character {char!r} "
            f"of {source}: use the text the checkpoint was trained on"
        )
    return torch.from_numpy(ids.astype(np.int64))  # (N,)


def encode_text(text: str, encoding: Any, index: Optional[dict[str, int]], vocab_size: int) -> Tensor:
    """A string -> its token ids, (T,) int64.

    Characters outside the vocabulary (char tokenizer) are one ``ConfigError`` naming them.

    Args:
        text: The string.
        encoding: The gpt2 ``tiktoken`` encoding, or None (char and byte tokenizers).
        index: ``char_index`` of the char vocabulary, or None (bytes).
        vocab_size: The number of ids, for error messages.
    """
    if encoding is not None:
        return torch.tensor(encoding.encode_ordinary(text), dtype=torch.long)  # (T,)
    if index is None:  # bytes
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # (T,)
    unknown = sorted(set(text) - index.keys())
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ConfigError(
            f"the text has {len(unknown)} character(s) outside the data's vocabulary of "
            f"{vocab_size}: {shown}; remove them (or train with {_KEY}.tokenizer byte)"
        )
    return torch.tensor([index[c] for c in text], dtype=torch.long)  # (T,)


def decode_ids(tokens: Tensor, encoding: Any, vocabulary: Optional[list[str]], vocab_size: int) -> list[str]:
    """Token ids (B, T) (or one row (T,)) -> B strings.

    Byte ids are decoded as UTF-8 with ``errors="replace"`` (a sample may stop inside a character).

    Args:
        tokens: The ids, any integer dtype and device.
        encoding: The gpt2 ``tiktoken`` encoding, or None (char and byte tokenizers).
        vocabulary: The char vocabulary, or None (bytes, gpt2).
        vocab_size: The number of ids; one outside ``[0, vocab_size)`` is a ``ConfigError``.
    """
    ids = torch.as_tensor(tokens).detach().long().cpu()
    rows = (ids[None] if ids.dim() == 1 else ids).tolist()  # B lists of T ids
    bad = [i for row in rows for i in row if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(
            f"token id {bad[0]} is outside the data's vocabulary of {vocab_size}: the model was "
            "trained on other text (model vocab_size and data vocabulary differ)"
        )
    if encoding is not None:
        return [encoding.decode(row) for row in rows]
    if vocabulary is None:
        return [bytes(row).decode("utf-8", errors="replace") for row in rows]
    return ["".join(vocabulary[i] for i in row) for row in rows]
