"""Stop training at the first NaN or infinite loss, gradient or weight, before it reaches a checkpoint.

A run that diverges (a learning rate too large, the log of zero, an overflow) used to go on with NaN
weights, exit 0 and overwrite ``last.ckpt`` and the best checkpoint with them. ``FiniteGuard``
(docs/architecture.md, "Non-finite values"):

- checks, before every optimiser step, the losses backpropagated since the last step
  (``on_before_backward``), the step's gradients and the weights they would update. Lightning calls
  ``on_before_optimizer_step`` inside ``optimizer.step``: after the closure's backward and the 16-mixed
  unscaling, before gradient clipping and the update (``plugins/precision/precision.py``
  ``_after_closure``, ``amp.py``), and for manual optimisation too, once per ``opt.step()`` of each GAN
  player. The check is a fused 2-norm of the gradients and one of the weights (repeated value by
  value only when it is not finite, as a norm of huge finite values overflows) and one host sync per
  step; under DDP the three flags are all-reduced, so that every rank takes the same decision;
- on a non-finite value raises a ``NonFiniteError`` (one line through ``cli.main``) naming the global
  step and the term: the ``train/...`` values logged in this step that are non-finite, else the loss
  or the parameter of the player (``net``, ``net_d``) whose optimiser was about to step. As it raises
  inside the step, the update never happens: weights, optimiser moments and the EMA (which follows
  optimiser steps, ``callbacks/ema.py``) keep their values from before it. Nothing writes
  ``last.ckpt`` after it: an exception skips ``on_train_end``, and ``callbacks/checkpoint.py`` writes
  only its exception file when asked to save on one (``save_on_exception``), never ``last.ckpt``;
- with ``skip=N`` skips the first N such steps instead: their gradients are dropped (set to None, so
  the optimiser moves no parameter and no moment; its step hooks still run, so the EMA moves towards
  the unchanged weights and a GAN counts the player's step), with one warning; the count is kept in
  checkpoints.
  Weights that are already non-finite (an update overflowed) stop the run whatever ``skip`` says;
- under 16-mixed AMP, non-finite gradients with finite losses are the GradScaler's: it skips that
  ``optimizer.step`` and lowers its scale, so they are neither counted nor stopped on. A non-finite
  loss is (a smaller scale cannot mend a NaN forward pass). The loss seen is the scaled one, so a loss
  whose scaled value overflows float32 (beyond ~1e38 / scale) counts as non-finite;
- refuses in ``on_save_checkpoint`` to write a checkpoint whose weights, optimiser state or EMA
  average hold a non-finite value (defence in depth: an update can overflow finite gradients into
  infinite weights); the previous files stay, as no file has been opened yet. A module that keeps a
  non-finite buffer on purpose (an additive -inf mask) registers it with ``persistent=False``, as
  lit_genai's networks do. Weights-only saves call no callback hook and are not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.nn.utils import get_total_norm

from lit_genai.callbacks.ema import EMA
from lit_genai.errors import ConfigError, LitGenAIError

ADVICE = "lower the learning rate or clip the gradients, or let finite.skip=N skip up to N such steps"
INF = float("inf")


class NonFiniteError(LitGenAIError):
    """Training met a NaN or infinite loss, gradient or weight."""


class FiniteGuard(Callback):
    """Stop (or skip) at a non-finite loss or gradient before the optimiser applies it.

    Args:
        skip: How many steps with non-finite losses or gradients to skip (their gradients dropped, the
            optimiser not moved) before stopping at the next one; 0 stops at the first. Steps that the
            16-mixed GradScaler skips do not count.
        enabled: Turn the callback off without removing it from the config.
    """

    def __init__(self, skip: int = 0, enabled: bool = True) -> None:
        if skip < 0:
            raise ConfigError(f"finite.skip must be 0 or more, got {skip}")
        self.skip = skip
        self.enabled = enabled
        self.skipped = 0
        self._losses: list[Tensor] = []  # losses backpropagated since the last optimiser step

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not pl_module.automatic_optimization:
            # Manual optimisation steps inside its batch; a backward with no step after it is not ours.
            # (Automatic optimisation keeps them: accumulated gradients span batches.)
            self._losses = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self.enabled:
            self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.enabled:
            return
        losses, self._losses = self._losses, []
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if not params:
            return
        # Every rank decides alike (a rank that raised alone would leave the others waiting). A failed
        # fast test is repeated exactly (``_finite``): only then are the values non-finite.
        for exact in (False, True):
            loss_ok, grads_ok, weights_ok = _decision(trainer, _flags(losses, grads, params, exact))
            if loss_ok and grads_ok and weights_ok:
                return
        if loss_ok and weights_ok and _scaler_is_active(trainer):
            return  # the GradScaler skips this step and lowers its scale (module docstring)
        what = _describe(trainer, pl_module, optimizer, losses, weights_ok)
        if weights_ok and self.skipped < self.skip:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # no gradient: the optimiser leaves every parameter alone
            if self.skipped == 1:
                rank_zero_warn(
                    f"finite: skipped step {trainer.global_step}: {what}; up to {self.skip} such steps are "
                    "skipped (finite.skip), the next one stops training"
                )
            return
        raise NonFiniteError(
            f"training stopped at step {trainer.global_step}: {what}; the step was not taken and the last "
            f"checkpoints are from earlier steps: {ADVICE}"
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped:
            rank_zero_info(f"finite: skipped {self.skipped} step(s) with non-finite losses or gradients")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._losses = []

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.enabled:
            return
        parts: dict[str, Any] = {
            "state_dict": checkpoint.get("state_dict"),
            "optimizer_states": checkpoint.get("optimizer_states"),
        }
        for callback in trainer.callbacks:
            if isinstance(callback, EMA):
                parts[f"callbacks[{callback.state_key!r}]"] = (checkpoint.get("callbacks") or {}).get(
                    callback.state_key
                )
        named = [(name, t) for name, t in _named_tensors(parts, "") if t.is_floating_point()]
        if not named or _finite([t for _, t in named], named[0][1].device, exact=False):
            return
        name, tensor = next(((n, t) for n, t in named if not torch.isfinite(t).all()), ("", None))
        if tensor is None:
            return  # finite values whose norm overflowed
        raise NonFiniteError(
            f"checkpoint of step {trainer.global_step} not written: {name} is {_kind(tensor)}, so training "
            f"diverged before it; earlier checkpoint files are kept: {ADVICE}"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _flags(losses: list[Tensor], grads: list[Tensor], params: list[Tensor], exact: bool) -> Tensor:
    """(3,) floats, 1 where finite: the losses since the last step, the gradients, the weights."""
    device = params[0].device
    return torch.stack(
        [_finite(losses, device, exact=True), _finite(grads, device, exact), _finite(params, device, exact)]
    ).float()


def _decision(trainer: pl.Trainer, flags: Tensor) -> list[bool]:
    """The flags of every rank combined (finite only where finite on all ranks), on the host."""
    return [f > 0 for f in trainer.strategy.reduce(flags, reduce_op="min").tolist()]


def _finite(tensors: list[Tensor], device: torch.device, exact: bool) -> Tensor:
    """Whether every value is finite, as a 0-d bool tensor on ``device``.

    The fast test is the 2-norm of them all (one fused kernel per device and dtype; NaN or inf when a
    value is), which can also overflow for huge finite values, so a failed fast test is repeated
    ``exact``-ly, tensor by tensor. (The max-norm cannot overflow, but on CPU it is ten times slower.)
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    tensors = [_local(t) for t in tensors]
    if exact:
        return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()
    return torch.isfinite(get_total_norm(tensors, 2.0)).to(device)


def _scaler_is_active(trainer: pl.Trainer) -> bool:
    """Whether a 16-mixed GradScaler skips steps with non-finite gradients (Lightning's MixedPrecision)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler is not None and scaler.is_enabled()


def _describe(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    losses: list[Tensor],
    weights_ok: bool,
) -> str:
    """What is non-finite on this rank, for the one-line message (computed on failure only)."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(n, _local(p)) for n, p in pl_module.named_parameters() if id(p) in ids]
    player = ", ".join(sorted({n.split(".")[0] for n, _ in named})) or type(pl_module).__name__
    if not weights_ok:
        name, p = next(((n, p) for n, p in named if not torch.isfinite(p).all()), ("", None))
        if p is not None:
            return f"the weights of {player} are already {_kind(p)} ({name}): the previous update overflowed"
    logged = _nonfinite_logged(trainer)
    if logged:
        return ", ".join(f"{key}={value}" for key, value in logged)
    bad = next((loss for loss in losses if not torch.isfinite(loss).all()), None)
    if bad is not None:
        source = (
            "returned by training_step"
            if pl_module.automatic_optimization
            else f"backpropagated into {player}"
        )
        return f"the loss {source} is {_kind(bad)}"
    grads = [
        (n, _local(p.grad)) for n, p in pl_module.named_parameters() if id(p) in ids and p.grad is not None
    ]
    name, grad = next(((n, g) for n, g in grads if not torch.isfinite(g).all()), ("", None))
    if grad is not None:
        return f"the gradient of {name} ({player}) is {_kind(grad)}"
    return "another rank's loss or gradients are non-finite"


def _local(tensor: Tensor) -> Tensor:
    """This rank's shard of a sharded tensor (FSDP2's DTensor parameters and gradients), else the tensor:
    each rank tests its own shard, and the all-reduced decision covers them all."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _nonfinite_logged(trainer: pl.Trainer) -> list[tuple[str, str]]:
    """The values logged in this training step (``self.log``) that are non-finite, as (name, kind).

    Lightning refreshes the public ``trainer.callback_metrics`` only after ``on_train_batch_end``, so
    this step's values are read where ``self.log`` put them: the active loop's result collection
    (``trainer._results``, Lightning 2.6). A module that logs after its ``opt.step()`` (the GAN) has
    logged nothing yet; the loss and the player are named instead.
    """
    results = getattr(trainer, "_results", None)
    if results is None:
        return []
    values = results.metrics(on_step=True)["callback"]
    return [
        (key, _kind(value))
        for key, value in values.items()
        if isinstance(value, Tensor)
        and not torch.isfinite(value).all()
        and not (key.endswith("_step") and key[: -len("_step")] in values)  # a forked copy of a name
    ]


def _named_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Tensor]]:
    """Every tensor in nested dicts and lists, with a readable path such as ``state_dict['net.w']``."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}[{key!r}]" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}[{i}]")


def _kind(tensor: Tensor) -> str:
    """``nan``, ``inf`` or ``-inf``: the non-finite values of ``tensor`` (NaN first, as it spreads)."""
    if torch.isnan(tensor).any():
        return "nan"
    return "inf" if (tensor == INF).any() else "-inf"
