"""Learning-rate logging that does not fail without a logger.

Lightning's ``LearningRateMonitor`` raises when the trainer has no logger, so a default that logs
the LR of every run would break ``--trainer.logger false``. This subclass stays silent then.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor


class LearningRateLogger(LearningRateMonitor):
    """``LearningRateMonitor`` that is a no-op when the run has no logger."""

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._active = bool(trainer.loggers)
        if self._active:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_active", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_active", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)
