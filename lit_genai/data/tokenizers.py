"""The three text tokenizers of ``CharText`` (``lit_genai.data.text``): character, byte and GPT-2 BPE
(karpathy/nanoGPT, ``data/shakespeare_char/prepare.py`` and ``data/openwebtext/prepare.py``).

- ``"char"``: the sorted set of the characters of the whole corpus (``vocabulary_of``): Tiny
  Shakespeare gives 65 symbols. The vocabulary is a list of characters; id i is ``vocabulary[i]``.
- ``"byte"``: the UTF-8 bytes, 256 ids, no vocabulary (per-id symbols would break multi-byte
  characters); decoding joins a row's bytes and decodes them with ``errors="replace"``.
- ``"gpt2"``: GPT-2's byte-pair encoding through ``tiktoken`` (an optional package; its first use
  downloads the BPE files once, then caches them under ``$TIKTOKEN_CACHE_DIR`` or a temporary
  folder), 50257 ids; encoding is ``encode_ordinary``, decoding the encoding's. The token stream's
  file on disk is ``lit_genai.data.token_file``.

``caption_words`` splits a caption into lower-case words, for the word tokenizer of text conditions
over a data set's ``text_vocabulary`` (``lit_genai.data.shapes``).

Shape legend: B rows, T tokens of a row, N tokens of a document, V vocabulary size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


def gpt2_encoding() -> Any:
    """``tiktoken.get_encoding("gpt2")``, or one line saying how to get it."""
    try:
        import tiktoken
    except ImportError as err:
        raise ConfigError(f"{_KEY}.tokenizer=gpt2 needs the tiktoken package: {_GPT2_HINT}") from err
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # offline: requests' ConnectionError; a bad cached file: ValueError
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataNotFoundError(
            f"{_KEY}.tokenizer=gpt2: loading the GPT-2 BPE files failed ({reason}): {_GPT2_HINT}"
        ) from err


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
