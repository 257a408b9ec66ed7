"""Checkpointing: Lightning's ModelCheckpoint with two fixes for resumable runs.

Lightning 2.6 writes ``last.ckpt`` after validation (or at the end of a training epoch) and, at the
end of training, only if it never wrote one before. A run that stops between two validations (at
``max_steps`` in the middle of an epoch, or by a Timer) would leave a ``last.ckpt`` from before its
final steps, and ``--ckpt_path last`` would then repeat them. This subclass also writes
``last.ckpt`` when training ends at a step it has not saved yet (docs/architecture.md, "Checkpoints").

With ``every_n_train_steps`` and a monitored metric that only validation logs, Lightning 2.6 defers
every save of a step, ``last.ckpt`` included, until the metric exists: a run killed before its first
validation had nothing to resume from. This subclass writes ``last.ckpt`` at those steps anyway (the
best checkpoints still wait for the metric).

An exception ends training in a state nobody checked (a NaN stopped by ``callbacks/finite.py``, a
crash half-way through a GAN iteration), so ``last.ckpt``, which ``--ckpt_path last`` resumes, is
never written after one: with ``save_on_exception=True`` Lightning writes its exception checkpoint
and then ``last.ckpt``; this subclass writes the exception checkpoint only.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint


class ModelCheckpoint(_ModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that always saves the final step as last, and
    never saves last after an exception."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.save_last
            and trainer.global_step != self._last_global_step_saved
            and not trainer.sanity_checking
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every, step = self._every_n_train_steps, trainer.global_step
        if (
            self.save_last
            and every > 0
            and step % every == 0
            and step != self._last_global_step_saved
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            saved = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            # Forget this save, or the deferred top-k save at the next validation of this step skips.
            self._last_global_step_saved = saved

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning's on_exception less its _save_last_checkpoint (module docstring).
        if self._should_save_on_exception(trainer):
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))
