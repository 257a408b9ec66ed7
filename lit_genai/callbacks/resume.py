"""What a resumed run needs that Lightning 2.6 does not restore (docs/architecture.md, "Checkpoints").

A run stopped and resumed must end bit for bit where the uninterrupted run ends, on CPU, however it
stopped: by ``max_steps`` in the middle of an epoch or exactly at its end, by ``max_epochs``, by a
kill (then ``--ckpt_path last``) or by Ctrl-C. ``ResumeState`` adds three things to Lightning's
checkpoints (weights, optimisers, schedulers, loops, callback states):

1. The global RNG states: torch (CPU), CUDA (every device), NumPy and Python
   (``lightning.fabric.utilities.seed._collect_rng_states``), as plain tensors and lists loadable
   with ``torch.load(weights_only=True)``. Lightning restores callback states right after reading the
   checkpoint, before ``configure_optimizers``, ``on_fit_start`` and the training iterator, so the
   restored state is the one the next batch's noise uses.
2. The data position: how many batches of the current epoch were trained, written into the state of
   each ``lit_genai.data.order.ResumableLoader`` (which Lightning saves and loads itself, but which
   cannot count trained batches: Lightning prefetches). The resumed epoch yields the rest of the same
   order (``lit_genai.data.order``).
3. The epoch bookkeeping, corrected when the checkpoint is read (Lightning 2.6's loop restart, see
   ``_FitLoop.update_restart_stage``, gets two cases wrong; Lightning issues #19617, resuming when
   ``max_steps`` falls on an epoch end, and #19815, a step checkpoint reruns its epoch, are open):
   - a run that stops by ``max_steps`` in the middle of an epoch ends that epoch's loop anyway
     (``on_advance_end`` marks it processed and completed), so its last checkpoint says the epoch is
     over and a resume skips the epoch's remaining batches. The epoch is marked unfinished again, and
     Lightning resumes it mid-epoch;
   - a checkpoint written inside the epoch's end (``ModelCheckpoint.on_train_epoch_end``, where
     Lightning saves by default) has the epoch processed but not completed; resumed by steps, Lightning
     runs the epoch end again (its hooks, and one more iterator). The epoch is marked completed, and
     what Lightning's epoch end does after that save (stepping epoch-interval LR schedulers) is done
     at the resumed run's start instead.

Ctrl-C (SIGINT) during ``fit`` stops at the end of the running batch instead of wherever the
interrupt lands (mid-step, leaving nothing saved): training ends as if ``max_steps`` were reached
there (it is set to the current step), so ``last.ckpt`` holds that step
(``lit_genai.callbacks.ModelCheckpoint`` saves the final step). A second Ctrl-C interrupts at once,
as Python does. Under DDP the ranks agree on stopping (an all-reduce of one flag per step).

DDP: rank 0 writes the checkpoint and every rank restores rank 0's RNG state. Lightning's
``seed_everything`` seeds all ranks alike, so that is every rank's state as long as the ranks draw
the same amount of randomness (modules draw world-sized noise and keep their rank's slice).
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_genai.data.order import ResumableLoader


class ResumeState(Callback):
    """Save the RNG states and the data position in checkpoints; fix the epoch bookkeeping on load.

    Args:
        enabled: Turn the callback off without removing it from the config.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._replay_epoch_end = False
        self._interrupted = False
        self._previous_handler: Optional[Any] = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    # ------------------------------------------------------------------ RNG states

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        version, python_state, gauss = states["python"]
        key, numpy_state, pos, has_gauss, cached_gaussian = states["numpy"]
        return {
            "torch": states["torch"],
            "torch.cuda": list(states.get("torch.cuda", [])),
            "numpy": {
                "key": key,
                "state": torch.from_numpy(numpy_state.astype(np.int64)),  # (624,) uint32 words
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": [version, list(python_state), gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.enabled or not state_dict:
            return
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("torch.cuda", [])
        if cuda and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                rank_zero_warn(
                    f"ResumeState: the checkpoint holds CUDA RNG states of {len(cuda)} devices but "
                    f"{torch.cuda.device_count()} are visible; CUDA RNG states not restored."
                )
        numpy = state_dict["numpy"]
        np.random.set_state(
            (
                numpy["key"],
                numpy["state"].numpy().astype(np.uint32),
                numpy["pos"],
                numpy["has_gauss"],
                numpy["cached_gaussian"],
            )
        )
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))

    # ------------------------------------------------------------------ data position

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.enabled:
            return
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        batches = _trained_batches_of_this_epoch(trainer)
        for state in fit_loop.get("state_dict", {}).get("combined_loader", []):
            if isinstance(state, dict) and "batches" in state:
                state["batches"] = batches

    # ------------------------------------------------------------------ epoch bookkeeping

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Runs before Lightning restores the loops from the same dict (_CheckpointConnector).
        self._replay_epoch_end = False
        if not self.enabled or trainer.state.fn != "fit":
            return
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        if fit_loop:
            fix = correct_epoch_bookkeeping(fit_loop)
            if fix == "cut":
                checkpoint["epoch"] = fit_loop["epoch_progress"]["current"]["completed"]
            self._replay_epoch_end = fix == "inside_end"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._replay_epoch_end:
            self._replay_epoch_end = False
            _step_epoch_schedulers(trainer)
        for loader in _training_loaders(trainer):
            if not isinstance(loader, ResumableLoader):
                rank_zero_warn(
                    f"ResumeState: the training DataLoader is a {type(loader).__name__}, so a run resumed "
                    "inside an epoch sees other batches than the uninterrupted run; use "
                    "lit_genai.data.order.training_loader for an exact resume."
                )
                break

    # ------------------------------------------------------------------ Ctrl-C

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._interrupted = False
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # the second Ctrl-C: stop now
            self._restore_handler()
            raise KeyboardInterrupt
        self._interrupted = True
        print(
            "lit-genai: Ctrl-C: stopping after this batch and saving last.ckpt (Ctrl-C again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        stop = self._interrupted
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and trainer.fit_loop.epoch_loop.max_steps != trainer.global_step:
            # Stop as max_steps does. trainer.should_stop would also run one more validation
            # (Lightning lets early stopping see final metrics), whose iterator draws from the global
            # RNG unless its DataLoader has a generator: the resumed run would not be exact.
            trainer.fit_loop.epoch_loop.max_steps = trainer.global_step
            rank_zero_info(f"Stopped by Ctrl-C at step {trainer.global_step}: resume with --ckpt_path last")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


def correct_epoch_bookkeeping(fit_loop: dict[str, Any]) -> str:
    """Correct a saved fit-loop state (``checkpoint["loops"]["fit_loop"]``) in place (module docstring, 3).

    Returns ``"cut"`` (an epoch cut by ``max_steps``, marked unfinished again), ``"inside_end"`` (saved
    inside the epoch end: marked completed), ``"after_end"`` (saved after it; in both the next epoch
    starts fresh) or ``""`` (left alone: saved inside an epoch, which Lightning resumes itself).
    """
    epochs = fit_loop["epoch_progress"]
    batches = fit_loop["epoch_loop.batch_progress"]
    total, current = epochs["total"], epochs["current"]
    ended = total["ready"] == total["started"] == total["processed"]
    if ended and not batches["is_last_batch"] and batches["current"]["processed"] > 0:
        # The loop ended an epoch whose last batch never came (max_steps): saved in the end it ran
        # for the cut epoch (processed, not completed) or after it (both).
        for counts in (total, current):
            counts["processed"] = counts["completed"] = counts["started"] - 1
        return "cut"
    if ended and batches["is_last_batch"] and total["completed"] >= total["processed"] - 1:
        # The epoch's last batch is done. Saved inside its end (processed, not completed), a resume by
        # steps would run the end again; saved after it, a resume by steps would start the next epoch
        # with this one's batch count (RESTARTED_ON_LAST keeps the current counters) and train none.
        inside = total["completed"] == total["processed"] - 1
        total["completed"], current["completed"] = total["processed"], current["processed"]
        _fresh_epoch(fit_loop)
        return "inside_end" if inside else "after_end"
    return ""


def _fresh_epoch(fit_loop: dict[str, Any]) -> None:
    """What the next epoch's loop reset (``reset_on_run``) does, on a saved fit-loop state."""
    for name in (
        "epoch_loop.batch_progress",
        "epoch_loop.scheduler_progress",
        "epoch_loop.automatic_optimization.optim_progress",
        "epoch_loop.manual_optimization.optim_step_progress",
    ):
        _zero_current(fit_loop.get(name, {}))
    fit_loop["epoch_loop.batch_progress"]["is_last_batch"] = False
    val = fit_loop.get("epoch_loop.val_loop.batch_progress", {})
    if "total" in val:
        val["total"] = dict.fromkeys(val["total"], 0)


def _zero_current(progress: dict[str, Any]) -> None:
    """Set every ``current`` counter of a saved Lightning progress tree to 0."""
    for key, value in progress.items():
        if key == "current" and isinstance(value, dict):
            progress[key] = dict.fromkeys(value, 0)
        elif isinstance(value, dict):
            _zero_current(value)


def _trained_batches_of_this_epoch(trainer: pl.Trainer) -> int:
    """Batches of the current epoch already trained: 0 once the epoch's last batch is done."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if progress.is_last_batch or progress.current.processed >= trainer.num_training_batches:
        return 0
    return progress.current.processed


def _training_loaders(trainer: pl.Trainer) -> list[Any]:
    combined = trainer.fit_loop._combined_loader
    return list(combined.flattened) if combined is not None else []


def _step_epoch_schedulers(trainer: pl.Trainer) -> None:
    """Step the epoch-interval LR schedulers as Lightning's epoch end would have after the save."""
    if not trainer.lightning_module.automatic_optimization:
        return  # manual optimisation steps its own schedulers
    ended_epoch = trainer.current_epoch - 1
    for config in trainer.lr_scheduler_configs:
        if config.interval != "epoch" or (ended_epoch + 1) % config.frequency:
            continue
        if config.reduce_on_plateau:
            rank_zero_warn(
                "ResumeState: the checkpoint was written inside an epoch end, before ReduceLROnPlateau "
                "read its metric; that one step is not replayed."
            )
            continue
        config.scheduler.step()
