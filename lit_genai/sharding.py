"""What sharded training (FSDP, DeepSpeed, Lightning's ModelParallelStrategy) asks of our code.

A sharded strategy splits every parameter across the ranks (docs/architecture.md, "Distributed"):
FSDP flattens a wrapped unit's parameters into one 1-D tensor and keeps a slice of it on each rank
(with Lightning's default ``use_orig_params=True`` the original parameters stay registered, as 1-D
views of this rank's slice, possibly empty). Three consequences, each handled here once:

- a forward pass gathers the parameters from every rank, so a forward pass outside the training,
  validation, test and predict steps (sample grids, reconstructions, evaluation samples) must run
  on every rank, through the root wrapper's ``forward`` (``forward_outside_step``), and a callback
  decides with ``draws_here`` which ranks draw;
- a gradient norm is a sum over every rank's slice: ``configure_gradient_clipping`` clips through
  FSDP's ``clip_grad_norm_`` where Lightning 2.6 refuses ``gradient_clip_val`` by norm;
- what sharding does not support (the EMA callback's average of whole parameters, a GAN's two
  optimisers and double backward) refuses the strategy with one line (``refuse_sharded``).

Parameter names: FSDP's auto-wrap inserts ``_fsdp_wrapped_module.`` (and activation checkpointing
``_checkpoint_wrapped_module.``) into the names of the wrapped units' parameters; ``clean_name``
drops them, so names chosen on a wrapped module equal those of the plain one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Optional, TypeVar, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lit_genai.errors import ConfigError

T = TypeVar("T")

SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)

_WRAPPERS = re.compile(r"_(fsdp|checkpoint)_wrapped_module\.")  # FSDP's and activation checkpointing's


def sharded_strategy(trainer: Optional[pl.Trainer]) -> Optional[str]:
    """The strategy's name (``fsdp``, ``deepspeed``, ...) if it shards the parameters, else None."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if not isinstance(strategy, SHARDED_STRATEGIES):
        return None
    return getattr(strategy, "strategy_name", None) or type(strategy).__name__


def refuse_sharded(trainer: Optional[pl.Trainer], what: str, why: str, fix: str) -> None:
    """Raise one ``ConfigError`` line when ``trainer``'s strategy is sharded: ``what`` cannot run under it
    because ``why``; ``fix`` says what to do."""
    name = sharded_strategy(trainer)
    if name is not None:
        raise ConfigError(f"{what} does not work under --trainer.strategy {name} ({why}): {fix}")


def clean_name(name: str) -> str:
    """A parameter name without the wrappers' segments: ``h.0._fsdp_wrapped_module.ln_1.weight`` ->
    ``h.0.ln_1.weight`` (FSDP's auto-wrap, activation checkpointing)."""
    return _WRAPPERS.sub("", name)


# ---------------------------------------------------------------------- forward passes outside a step


def draws_here(trainer: pl.Trainer) -> bool:
    """Whether this rank runs a drawing callback's forward passes: rank 0 alone, or every rank under
    a sharded strategy (each forward pass gathers the parameters from all of them)."""
    return trainer.is_global_zero or sharded_strategy(trainer) is not None


def forward_outside_step(
    trainer: Optional[pl.Trainer], pl_module: pl.LightningModule, fn: Callable[[], T]
) -> T:
    """``fn()``: forward passes of ``pl_module`` outside Lightning's steps (``sample``, ``encode`` /
    ``decode``), without gradients.

    Unsharded strategies: called as it is. Under a sharded strategy every rank must call this at
    the same point; ``fn`` then runs inside a call of the strategy's root module (FSDP's root
    ``FullyShardedDataParallel``, DeepSpeed's engine, or the LightningModule itself, whose
    ``fully_shard`` hooks gather, under ModelParallelStrategy), which gathers the parameters it
    shards (calling ``pl_module.net`` directly would meet this rank's 1-D slices), and inside the
    precision plugin's forward context (the autocast of ``*-mixed``), as Lightning runs
    ``validation_step``. The redirection is Lightning's own (``strategies.strategy.
    _ForwardRedirection``, private, and for a method name only, where ``fn`` is any callable).
    """
    if sharded_strategy(trainer) is None:
        return fn()
    root = trainer.strategy.model if trainer.strategy.model is not None else pl_module
    patched = "forward" in vars(pl_module)
    original = pl_module.forward

    def redirected(*_args: Any, **_kwargs: Any) -> T:
        _restore(pl_module, original, patched)  # fn may call the real forward
        return fn()

    pl_module.forward = redirected
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            return root()
    finally:
        _restore(pl_module, original, patched)


def _restore(module: torch.nn.Module, original: Callable[..., Any], patched: bool) -> None:
    if patched:
        module.forward = original
    else:
        vars(module).pop("forward", None)  # the class's forward again, nothing left in the instance


# ---------------------------------------------------------------------- gradient clipping


def configure_gradient_clipping(
    self: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    gradient_clip_val: Optional[Union[int, float]] = None,
    gradient_clip_algorithm: Optional[str] = None,
) -> None:
    """``LightningModule.configure_gradient_clipping`` that also clips by norm under FSDP.

    Lightning 2.6's ``FSDPPrecision.clip_grad_by_norm`` raises ("not supported"): the norm is a
    sum over every rank's slices, which only the root ``FullyShardedDataParallel``'s
    ``clip_grad_norm_`` computes, and the precision plugin holds no reference to it. The strategy
    does (``trainer.strategy.model``): every rank calls this hook at the same step, after the AMP
    scaler unscaled the gradients. Everything else goes to Lightning's ``clip_gradients``.
    Assign it as a class attribute of a module with one optimiser (FSDP's norm covers every
    parameter of the root).
    """
    strategy = self.trainer.strategy
    by_norm = gradient_clip_algorithm is None or gradient_clip_algorithm == "norm"  # a str enum in Lightning
    if isinstance(strategy, FSDPStrategy) and gradient_clip_val and by_norm:
        strategy.model.clip_grad_norm_(gradient_clip_val)
        return
    self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
