"""The order of training examples, made resumable (docs/architecture.md, "Checkpoints").

Lightning 2.6 restarts a plain DataLoader with a fresh shuffle drawn from the global RNG, so a run
resumed in the middle of an epoch sees other batches than the uninterrupted run, and every new
iterator draws one more number from the global RNG (its workers' base seed). Here:

- ``EpochOrder`` is the training sampler: epoch e's indices are a permutation of range(n) drawn from
  a generator seeded by (seed, e) (``shuffle``), or ``e * n + i`` (``windows``: data sets whose item
  ``e * n + i`` is window i of epoch e, drawn from a generator seeded by that index). The order is a
  function of (seed, epoch) alone, never of the global RNG.
- ``ResumableLoader`` is a DataLoader with ``state_dict``/``load_state_dict``, which Lightning saves in
  the checkpoint (``loops.fit_loop.combined_loader``) and loads right before it creates the resumed
  epoch's iterator. The state holds the seed, the epoch and how many batches of it were trained
  (filled in by ``lit_genai.callbacks.ResumeState``, which knows the loop's count; the loader itself
  cannot tell trained batches from prefetched ones). A resumed epoch then yields the rest of the
  same order.
- Its own generator draws the workers' base seed, reseeded per epoch, so creating iterators leaves
  the global RNG alone.

Under DDP Lightning wraps the sampler in ``DistributedSamplerWrapper`` (no shuffle of its own; rank r
takes positions r, r + W, ...), so skipping k trained batches of every rank skips ``k * B * W``
positions of the global order. The skipped positions are moved to the end rather than dropped, so
the sampler's length (which Lightning and the wrapper read once) never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_SEED_MIX = 1_000_003  # a prime: (seed, epoch) -> one generator seed, distinct for nearby pairs


class EpochOrder(Sampler[int]):
    """Indices of one epoch, a function of (seed, epoch); ``skip`` resumes inside an epoch.

    Args:
        n: Examples per epoch.
        shuffle: A fresh permutation of range(n) every epoch; else range(n) in order.
        windows: Yield ``epoch * n + i`` (the windows of epoch e; no shuffle).
        seed: Seed of the permutations; ``None`` takes ``torch.initial_seed()`` (the seed given to
            ``seed_everything``), which draws nothing from the global RNG.
    """

    def __init__(
        self, n: int, *, shuffle: bool = True, windows: bool = False, seed: Optional[int] = None
    ) -> None:
        self.n, self.shuffle, self.windows = n, shuffle and not windows, windows
        self.seed = int(torch.initial_seed() if seed is None else seed) % 2**62
        self.epoch, self.start = 0, 0
        self.loader_generator = torch.Generator()  # the workers' base seed (ResumableLoader)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start (directly, or through ``DistributedSamplerWrapper``)."""
        self.epoch = epoch
        self.loader_generator.manual_seed(self._epoch_seed(epoch) + 1)

    def skip(self, count: int) -> None:
        """The next iteration starts at position ``count`` of the epoch's order (then wraps around)."""
        self.start = count % self.n if self.n else 0

    def order(self, epoch: int) -> torch.Tensor:
        """(n,) int64 indices of ``epoch``."""
        if self.windows:
            return torch.arange(epoch * self.n, (epoch + 1) * self.n)
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self._epoch_seed(epoch)))

    def __iter__(self) -> Iterator[int]:
        order, start = self.order(self.epoch), self.start
        self.start = 0  # the skip applies to the resumed epoch only
        return iter(torch.cat([order[start:], order[:start]]).tolist())

    def __len__(self) -> int:
        return self.n

    def _epoch_seed(self, epoch: int) -> int:
        return (self.seed * _SEED_MIX + epoch) % 2**62


class ResumableLoader(DataLoader):
    """A DataLoader over an ``EpochOrder`` whose position Lightning saves and restores (module docstring)."""

    def state_dict(self) -> dict[str, Any]:
        order = epoch_order(self)
        if order is None:
            return {}
        # "batches": trained batches of the current epoch, filled in by ResumeState at save time.
        return {"seed": order.seed, "epoch": order.epoch, "batches": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = epoch_order(self)
        if order is None or not state:
            return
        order.seed = int(state["seed"])
        if state.get("batches"):
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            order.skip(int(state["batches"]) * (self.batch_size or 1) * world)


def epoch_order(loader: Any) -> Optional[EpochOrder]:
    """The ``EpochOrder`` behind ``loader``'s sampler, also inside Lightning's DistributedSamplerWrapper."""
    sampler = getattr(loader, "sampler", None)
    for candidate in (sampler, getattr(getattr(sampler, "dataset", None), "_sampler", None)):
        if isinstance(candidate, EpochOrder):
            return candidate
    return None


def training_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    *,
    shuffle: bool = True,
    windows: bool = False,
    collate_fn: Optional[Callable[[list[Any]], Any]] = None,
    order: Optional[EpochOrder] = None,
) -> ResumableLoader:
    """The training DataLoader of every data module: resumable order, its own worker-seed generator
    (``collate_fn``: the DataLoader's, None = torch's default collate; ``order``: the sampler, an
    ``EpochOrder`` subclass, None = ``EpochOrder(len(dataset), shuffle=shuffle, windows=windows)``)."""
    order = EpochOrder(len(dataset), shuffle=shuffle, windows=windows) if order is None else order
    order.set_epoch(0)
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=order.loader_generator,
        collate_fn=collate_fn,
    )
