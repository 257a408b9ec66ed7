"""Checkpointing: Lightning's ModelCheckpoint with one fix for resumable runs.

Lightning 2.6 writes ``last.ckpt`` after validation (or at the end of a training epoch) and, at the
end of training, only if it never wrote one before. A run that stops between two validations (at
``max_steps`` in the middle of an epoch, or by a Timer) would leave a ``last.ckpt`` from before its
final steps, and ``--ckpt_path last`` would then repeat them. This subclass also writes
``last.ckpt`` when training ends at a step it has not saved yet (docs/architecture.md, "Checkpoints").
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint


class ModelCheckpoint(_ModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that always saves the final step as last."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.save_last
            and trainer.global_step != self._last_global_step_saved
            and not trainer.sanity_checking
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
