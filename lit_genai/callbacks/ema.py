"""Exponential moving average of one submodule's weights (docs/architecture.md, "EMA").

    theta_ema <- beta * theta_ema + (1 - beta) * theta          after every optimiser step of the target

Used by DDPM (Ho et al. 2020, decay 0.9999; sampling with raw weights gives FID ~12 instead of ~3.2),
GANs (Karras et al. 2018, generator only) and EDM (Karras et al. 2022, half-life in steps).

Why not Lightning's ``EMAWeightAveraging``: in Lightning 2.6 it deep-copies and averages the whole
LightningModule (a GAN's discriminator too), counts ``trainer.global_step`` (which advances once per
optimiser under manual optimisation, so twice per GAN iteration), swaps only for validation (not for
test or predict), and copies the average over the training weights when fit ends. This callback:

- averages only ``target`` (a submodule name; default: the module's ``ema_target`` attribute);
- counts real optimiser steps of that submodule through ``Optimizer.register_step_post_hook``, so a
  discriminator step, a step skipped by the AMP gradient scaler, or gradient accumulation does not
  count;
- is saved in and restored from checkpoints (``state_dict`` / ``load_state_dict``);
- swaps the average in for validation, test and predict (and thus for the sample-logging callback,
  which runs inside validation) and swaps the training weights back afterwards;
- keeps every checkpoint on the training weights: while the average is swapped in, a state-dict hook
  on the target makes ``state_dict()`` return the training weights, so a checkpoint written then,
  full or weights-only (for which Lightning calls no callback hook), never resumes training on EMA
  weights;
- follows the module it is set up with: an instance reused for a second ``fit`` averages the new
  module (from its own weights), not the old one.

Buffers (e.g. BatchNorm running statistics) are copied, not averaged, as in StyleGAN/EDM.

Sharded strategies (FSDP, DeepSpeed, ModelParallel) are refused in ``setup`` with one line. Under
them each rank holds a 1-D slice of each parameter: this average would be of rank-local slices,
swapped into views FSDP re-creates, saved by rank 0 alone (its slice, as if it were the whole), and
the state-dict hook would put slices into FSDP's gathered full state dict. Doing it right means a
sharded average saved and loaded through FSDP's state-dict machinery; until then a clear refusal
beats a silently wrong checkpoint. Lightning's own ``WeightAveraging`` does not support sharded
models either (its docstring).

``load_for_evaluation`` loads a checkpoint's weights and then its EMA average into a module outside
``Trainer.test`` (``lit-genai robustness``, benchmarks), as this callback's test-time swap would.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_genai import sharding
from lit_genai.errors import ConfigError


class EMA(Callback):
    """Keep an exponential moving average of a submodule and evaluate with it.

    Args:
        decay: Per-step decay beta of the average (DDPM: 0.9999). Ignored when ``half_life`` is set.
        half_life: If set, the half-life of the average in optimiser steps of the target
            (beta = 0.5 ** (1 / half_life)), in the spirit of EDM's ``ema_halflife_kimg``.
        warmup: Use beta_n = min(beta, (1 + n) / (10 + n)) at update n, so early averages are not
            dominated by the random initialisation (TensorFlow's ExponentialMovingAverage).
        target: Name of the submodule to average (dotted path). ``None`` uses the LightningModule's
            ``ema_target`` attribute (``"net"`` for diffusion, the generator for GANs), or the whole
            module if it has none.
        enabled: Turn the callback off without removing it from the config.
    """

    def __init__(
        self,
        decay: float = 0.9999,
        half_life: Optional[float] = None,
        warmup: bool = False,
        target: Optional[str] = None,
        enabled: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1], got {decay}")
        if half_life is not None and half_life <= 0:
            raise ConfigError(f"ema.half_life must be positive, got {half_life}")
        self.decay = decay
        self.half_life = half_life
        self.warmup = warmup
        self.target = target
        self.enabled = enabled
        self.num_updates = 0
        self._module: Optional[nn.Module] = None
        self._shadow: Optional[dict[str, torch.Tensor]] = None  # name -> averaged tensor
        self._backup: Optional[dict[str, torch.Tensor]] = None  # training weights while swapped
        self._pending: Optional[dict[str, torch.Tensor]] = None  # loaded before the shadow existed
        self._hooks: list[Any] = []  # optimiser step hooks
        self._state_dict_hook: Any = None  # while swapped in
        self._pairs: tuple[list[torch.Tensor], ...] = (
            [],
            [],
            [],
            [],
        )  # shadow/live params, shadow/live buffers

    # ------------------------------------------------------------------ maths
    def current_decay(self) -> float:
        """The beta used for the next update."""
        beta = 0.5 ** (1.0 / self.half_life) if self.half_life is not None else self.decay
        if self.warmup:
            beta = min(beta, (1 + self.num_updates) / (10 + self.num_updates))
        return beta

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step: lerp the parameters towards the live ones, copy the buffers."""
        beta = self.current_decay()
        shadow_params, live_params, shadow_buffers, live_buffers = self._pairs
        if live_params:
            torch._foreach_lerp_(shadow_params, live_params, 1.0 - beta)
        if live_buffers:
            torch._foreach_copy_(shadow_buffers, live_buffers)
        self.num_updates += 1

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        sharding.refuse_sharded(
            trainer,
            "the EMA callback",
            "its average needs every parameter whole on each rank, which the strategy splits across "
            "them; Lightning's WeightAveraging does not support sharded models either",
            "add --ema.enabled false, or use --trainer.strategy ddp",
        )
        name = self.target if self.target is not None else getattr(pl_module, "ema_target", None)
        try:
            module = pl_module if name is None else pl_module.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"ema.target={name!r} is not a submodule of {type(pl_module).__name__} "
                f"(its children: {[n for n, _ in pl_module.named_children()]})"
            ) from None
        if module is not self._module:
            self._bind(module)

    def _bind(self, module: nn.Module) -> None:
        # A new target (this instance was used with another module before): its average starts from
        # its own weights, lazily in _ensure_shadow, unless a checkpoint's EMA state waits for it.
        self.swap_out()
        self._remove_hooks()
        self._module = module
        self._shadow = None
        self._pairs = ([], [], [], [])
        if self._pending is None:
            self.num_updates = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        self._ensure_shadow()
        # Count optimiser steps of the target: hook every optimiser that owns one of its parameters.
        owned = {id(p) for p in self._module.parameters()}
        for opt in trainer.optimizers:
            if any(id(p) in owned for group in opt.param_groups for p in group["params"]):
                self._hooks.append(opt.register_step_post_hook(lambda *_: self.update()))
        if not self._hooks:
            rank_zero_warn("EMA: no optimiser updates the target's parameters; the average will not move.")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        self.swap_out()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_in()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_out()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_in()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_out()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_in()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.swap_out()

    # ------------------------------------------------------------------ swapping
    @property
    def swapped_in(self) -> bool:
        return self._backup is not None

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the averaged weights into the target, keeping the training weights aside.

        Until ``swap_out``, the target's ``state_dict()`` (and so every checkpoint) holds the
        training weights, not the average that is in the module.
        """
        if not self.enabled or self._module is None or self.swapped_in:
            return
        self._ensure_shadow()
        live = _weights(self._module)
        clones: dict[int, torch.Tensor] = {}  # one clone per tensor: tied names share it
        self._backup = {n: clones.setdefault(id(t), t.detach().clone()) for n, t in live.items()}
        for name, tensor in live.items():
            tensor.detach().copy_(self._shadow[name])
        self._state_dict_hook = self._module.register_state_dict_post_hook(_TrainingWeightsHook(self))

    @torch.no_grad()
    def swap_out(self) -> None:
        """Put the training weights back."""
        if self._backup is None:
            return
        self._state_dict_hook.remove()
        self._state_dict_hook = None
        for name, tensor in _weights(self._module).items():
            tensor.detach().copy_(self._backup[name])
        self._backup = None

    def _put_training_weights(self, module: nn.Module, state_dict: dict[str, Any], prefix: str) -> None:
        if module is not self._module or self._backup is None:
            return  # a copy of the target made while swapped in: it keeps its own weights
        for name, tensor in self._backup.items():
            if prefix + name in state_dict:
                state_dict[prefix + name] = tensor

    # ------------------------------------------------------------------ checkpoints
    @property
    def state_key(self) -> str:
        return "EMA"

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled or self._shadow is None:
            return {}
        return {"num_updates": self.num_updates, "shadow": {n: t.clone() for n, t in self._shadow.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.num_updates = int(state_dict["num_updates"])
        self._pending = state_dict["shadow"]
        if self._shadow is not None:
            self._apply_pending()

    # ------------------------------------------------------------------ helpers
    def _ensure_shadow(self) -> None:
        # Created lazily, after Lightning has restored the module's weights from a checkpoint, so that
        # test/predict on a checkpoint trained without EMA averages the loaded weights, not a fresh init.
        if self._shadow is None and self._module is not None:
            live = _weights(self._module)
            clones: dict[int, torch.Tensor] = {}  # tied weights share one average
            self._shadow = {n: clones.setdefault(id(t), t.detach().clone()) for n, t in live.items()}
            self._apply_pending()
            params = [p for _, p in self._module.named_parameters()]  # each tensor once
            buffers = [b for n, b in self._module.named_buffers() if n in self._shadow]
            self._pairs = (
                [clones[id(p)] for p in params],
                [p.detach() for p in params],
                [clones[id(b)] for b in buffers],
                buffers,
            )

    @torch.no_grad()
    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        missing = set(self._shadow) ^ set(self._pending)
        if missing:
            raise ConfigError(
                f"EMA state in the checkpoint does not match the target: differing keys {sorted(missing)[:5]}"
            )
        for name, tensor in self._pending.items():
            self._shadow[name].copy_(tensor)
        self._pending = None

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def load_for_evaluation(
    model: pl.LightningModule,
    ckpt_path: str,
    trainer: Optional[pl.Trainer] = None,
    *,
    weights_only: bool = True,
) -> bool:
    """Load a ``lit-genai fit`` checkpoint into ``model`` as ``test`` would see it: the module's weights,
    then the EMA average (stored as ``callbacks["EMA"]["shadow"]``, keyed like the target submodule's
    state dict) unless ``trainer``'s EMA callback is disabled.

    Args:
        model: The module to load into (built with the checkpoint's hyperparameters).
        ckpt_path: The checkpoint file.
        trainer: Its EMA callback, if any, decides whether the average is loaded and into which submodule.
        weights_only: ``torch.load(weights_only=...)``; False only for checkpoints you trust.

    Returns:
        Whether the EMA average was loaded.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=model.strict_loading)
    shadow = (checkpoint.get("callbacks") or {}).get("EMA", {}).get("shadow")
    emas = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, EMA)]
    if not shadow or (emas and not emas[0].enabled):
        return False
    name = emas[0].target if emas and emas[0].target is not None else getattr(model, "ema_target", None)
    target = model if name is None else model.get_submodule(name)
    target.load_state_dict(shadow)
    return True


class _TrainingWeightsHook:
    """State-dict post hook on the target while the average is swapped in: the training weights go
    into ``state_dict()`` in place of the average (Lightning calls no callback hook for weights-only
    saves, so the module itself must answer). A deep copy or a pickle of the module gets a hook that
    leaves the copy's own weights alone."""

    def __init__(self, ema: Optional[EMA]) -> None:
        self.ema = ema

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, _metadata: Any) -> None:
        if self.ema is not None:
            self.ema._put_training_weights(module, state_dict, prefix)

    def __deepcopy__(self, memo: dict[int, Any]) -> _TrainingWeightsHook:
        return self  # not a copy of the callback: `module is ema._module` then fails for the copy

    def __reduce__(self) -> tuple[Any, ...]:
        return (_TrainingWeightsHook, (None,))


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``module.state_dict()`` saves, by its keys: parameters and persistent buffers.

    Read from ``named_parameters`` / ``named_buffers`` rather than ``state_dict()``, whose values the
    swap-in hook replaces. Tied tensors appear under each of their names, as in ``state_dict()``.
    """
    weights = dict(module.named_parameters(remove_duplicate=False))
    for name, buffer in module.named_buffers(remove_duplicate=False):
        owner, _, leaf = name.rpartition(".")
        if leaf not in module.get_submodule(owner)._non_persistent_buffers_set:
            weights[name] = buffer
    return weights
