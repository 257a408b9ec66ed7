"""The DataLoaders the token data modules share (text, audio, image tokens, pixels).

A data module with ``train_set`` / ``val_set`` / ``test_set``, ``batch_size``, ``num_workers`` and
``predict_samples`` mixes in ``SplitLoaders`` (before ``LightningDataModule``). Training draws
either shuffled examples (``epoch_indices = False``: fixed token sets) or the indices
``EpochIndices`` yields (``True``: data sets whose item ``e * n + i`` is window i of epoch e, drawn
from a generator seeded by that index). ``predict_dataloader`` yields (B,) int64 sample indices
(docs/architecture.md, "Batches").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochIndices(Sampler[int]):
    """Yields ``epoch * n + i`` for i in range(n): the window indices of one epoch.

    Lightning calls ``set_epoch`` at the start of every training epoch (directly, or through the
    ``DistributedSamplerWrapper`` it puts around a custom sampler under DDP).
    """

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


class SplitLoaders:
    """``train/val/test/predict_dataloader`` over the module's sets (module docstring)."""

    epoch_indices = False  # True: training indices from EpochIndices, else shuffled
    train_set: Optional[Dataset]
    val_set: Optional[Dataset]
    test_set: Optional[Dataset]
    batch_size: int
    num_workers: int
    predict_samples: int

    def train_dataloader(self) -> DataLoader:
        dataset = self._need(self.train_set)
        if self.epoch_indices:
            return self._loader(dataset, sampler=EpochIndices(len(dataset)))
        return self._loader(dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._need(self.val_set))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._need(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(self.predict_samples), batch_size=self.batch_size)  # (B,) int64

    def _need(self, dataset: Optional[Dataset]) -> Dataset:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        return dataset

    def _loader(
        self, dataset: Dataset, sampler: Optional[Sampler] = None, shuffle: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )
