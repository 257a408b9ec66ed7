"""The DataLoaders the token data modules share (text, audio, image tokens, pixels).

A data module with ``train_set`` / ``val_set`` / ``test_set``, ``batch_size``, ``num_workers`` and
``predict_samples`` mixes in ``SplitLoaders`` (before ``LightningDataModule``). Training draws
either shuffled examples (``epoch_indices = False``: fixed token sets) or the indices ``e * n + i``
(``True``: data sets whose item ``e * n + i`` is window i of epoch e, drawn from a generator seeded
by that index), both from ``lit_genai.data.order``, which resumes exactly inside an epoch.
``predict_dataloader`` yields (B,) int64 sample indices (docs/architecture.md, "Batches").
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from lit_genai.data.order import training_loader


class SplitLoaders:
    """``train/val/test/predict_dataloader`` over the module's sets (module docstring)."""

    epoch_indices = False  # True: training indices e * n + i (EpochOrder windows), else shuffled
    train_set: Optional[Dataset]
    val_set: Optional[Dataset]
    test_set: Optional[Dataset]
    batch_size: int
    num_workers: int
    predict_samples: int

    def train_dataloader(self) -> DataLoader:
        dataset = self._need(self.train_set)
        return training_loader(dataset, self.batch_size, self.num_workers, windows=self.epoch_indices)

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

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # the workers' seed: not from the global RNG (data/order.py)
        )
