"""Datasets of next-token windows over a token sequence, for ``CharText`` (``lit_genai.data.text``):
random windows for training (karpathy/nanoGPT's ``get_batch``), consecutive ones for validation.

A window of ``block_size + 1`` tokens at ``start`` gives ``x = tokens[start : start + T]`` and
``y = tokens[start + 1 : start + T + 1]`` (x shifted by one token), and with labels ``c`` the index of
the window's document. The tokens are an int64 tensor or a memory-mapped ``TokenFile``
(``lit_genai.data.token_file``); starts are a tensor or a ``range`` (never materialised, for corpora
larger than memory).

- ``RandomWindows``: window k starts at a uniform valid offset drawn from a NumPy generator seeded by
  ``(seed, k)``, so a sampler's indices (``e * n + i`` in epoch e) decide the draws: epochs differ,
  the same seed repeats a run, worker processes need no shared state.
- ``FixedWindows``: window j is the j-th start's window; deterministic.

Shape legend: T block_size, S valid starts, N tokens of the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset


class RandomWindows(Dataset):
    """Window k starts at a uniform valid offset drawn from ``default_rng((seed, k))``.

    Args:
        tokens: The corpus, (N,) int64 (or a ``TokenFile``), documents back to back.
        starts: (S,) every valid start of a window of ``block_size + 1`` tokens, in order: an int64
            tensor, or a ``range`` (never materialised, for corpora larger than memory).
        labels: (S,) int64 the document of each start, or None.
        block_size: Tokens of x (and of y).
        seed: First entropy word of every window's generator.
        length: Windows per epoch (``len`` of the set; indices beyond it belong to later epochs).
    """

    def __init__(
        self,
        tokens: Any,
        starts: Sequence[int],
        labels: Optional[Tensor],
        block_size: int,
        seed: int,
        length: int,
    ) -> None:
        self.tokens, self.starts, self.labels = tokens, starts, labels
        self.block_size, self.seed, self.length = block_size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[Tensor, ...]:
        j = int(np.random.default_rng((self.seed, int(k))).integers(len(self.starts)))
        return _window(self.tokens, self.starts, self.labels, j, self.block_size)


class FixedWindows(Dataset):
    """Window j is ``tokens[starts[j] : starts[j] + block_size + 1]`` as (x, y[, c]).

    Args:
        tokens: The corpus, (N,) int64 (or a ``TokenFile``).
        starts: (S,) the windows' starts, an int64 tensor or a ``range``.
        labels: (S,) int64 the document of each start, or None.
        block_size: Tokens of x (and of y).
    """

    def __init__(self, tokens: Any, starts: Sequence[int], labels: Optional[Tensor], block_size: int) -> None:
        self.tokens, self.starts, self.labels, self.block_size = tokens, starts, labels, block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[Tensor, ...]:
        return _window(self.tokens, self.starts, self.labels, j, self.block_size)


def _window(
    tokens: Any, starts: Sequence[int], labels: Optional[Tensor], j: int, block_size: int
) -> tuple[Tensor, ...]:
    """Window j as (x, y) (T,), (T,) int64, or (x, y, c) with c the () label of its document."""
    start = int(starts[j])
    chunk = tokens[start : start + block_size + 1]  # (T + 1,)
    x, y = chunk[:-1], chunk[1:]  # (T,), (T,): y is x shifted by one token
    return (x, y) if labels is None else (x, y, labels[j])
