"""What the token paradigms share (``ar.NextToken``, ``masked.MaskedTokens``): nanoGPT's optimiser
groups and LR schedule, fine-tuning from a checkpoint, ``torch.compile`` outside the module tree,
and text through a vocabulary. Kept outside both paradigm folders, which never import each other
(docs/architecture.md, "Layout").

Papers and code: Karpathy's nanoGPT (``model.py``: ``configure_optimizers`` parameter groups;
``train.py``: ``get_lr``, warm-up + cosine decay); Loshchilov & Hutter 2019 (AdamW, decoupled weight
decay).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.lora import is_adapter
from lit_genai.sharding import clean_name, configure_gradient_clipping

# ---------------------------------------------------------------------- optimisation (pure)


def nanogpt_lr(step: int, lr: float, warmup_steps: int, decay_steps: Optional[int], min_lr: float) -> float:
    """The learning rate at optimisation step ``step`` (0-based): nanoGPT ``train.py`` ``get_lr``.

    Linear warm-up ``lr (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``, then a cosine
    from ``lr`` down to ``min_lr`` at ``step = decay_steps``, then ``min_lr``. ``decay_steps=None``
    keeps ``lr`` after the warm-up.
    """
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if decay_steps is None:
        return lr
    if step > decay_steps or decay_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)  # in [0, 1]
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


# Layers whose ``weight`` decays (minGPT's whitelist of ``configure_optimizers``): the weight matrices
# and convolution kernels. Every other parameter gets none: biases, norm gains, embeddings (nanoGPT
# decays them; here not, and so neither does a token embedding tied to the output layer), and any
# parameter no such layer owns.
DECAYED_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def decay_parameter_names(net: nn.Module) -> tuple[list[str], list[str]]:
    """(names that get weight decay, names that do not), as nanoGPT's ``configure_optimizers``.

    Decided by the layer that owns a parameter and the parameter's name, never by its shape: a
    parameter decays if it is the ``weight`` of a ``DECAYED_LAYERS`` layer and of no other kind of
    layer (an embedding tied to the output layer does not). FSDP flattens parameters to 1-D slices
    (``lit_genai.sharding``), so nanoGPT's ``p.dim() >= 2`` would put every weight in the
    no-decay group there; owners and names survive the flattening, and the names come without
    FSDP's wrapper segments (``sharding.clean_name``). Each shared parameter is listed once, under
    its first name (``named_parameters``).
    """
    decays: dict[int, bool] = {}  # id(parameter) -> whether every layer holding it decays it
    for module in net.modules():
        for leaf, p in module.named_parameters(recurse=False):
            owner_decays = leaf == "weight" and isinstance(module, DECAYED_LAYERS)
            decays[id(p)] = decays.get(id(p), True) and owner_decays
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if name.rpartition(".")[2] == "_flat_param":  # FSDP with use_orig_params=False: no names left
            raise ConfigError(
                "weight decay groups need the parameters' names, which FSDP with use_orig_params=False "
                "hides: keep Lightning's default --trainer.strategy.init_args.use_orig_params true"
            )
        (decay if decays[id(p)] else no_decay).append(clean_name(name))
    return decay, no_decay


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``decay_parameter_names`` with ``weight_decay``, the rest with 0.

    Parameters without gradient (a frozen text encoder's) are in neither: they are not optimised.
    Each group also carries its parameter ``names`` (kept by torch optimisers, plain strings)."""
    params = {clean_name(n): p for n, p in net.named_parameters() if p.requires_grad}
    decay, no_decay = ([n for n in names if n in params] for names in decay_parameter_names(net))
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "names": decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------- loading weights


def load_net_weights(net: nn.Module, path: str, key: str = "model.init_from") -> None:
    """Copy the ``net.`` weights of a lit_genai checkpoint into ``net`` (fine-tuning).

    Read with ``torch.load(weights_only=True)``; the checkpoint's training weights (not an EMA) are
    used. A missing or unreadable file, a checkpoint without ``net.`` weights, and weights of other
    names or shapes are one ``ConfigError`` line each, naming ``key``.
    """
    where = f"{key}={path}"
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{where}: no such checkpoint file; pass a checkpoint saved by lit-genai fit")
    try:
        checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not usable
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"{where}: cannot read the checkpoint ({first})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    weights = {k[len("net.") :]: v for k, v in (state or {}).items() if k.startswith("net.")}
    if not weights:
        raise ConfigError(f"{where}: holds no net.* weights; pass a checkpoint of a module with a `net`")
    own = net.state_dict()
    for name, value in weights.items():
        if name in own and own[name].shape != value.shape:
            raise ConfigError(
                f"{where}: net.{name} has shape {list(value.shape)} there but {list(own[name].shape)} "
                "here: give model.net the checkpoint's network settings"
            )
    # LoRA adapters (lit_genai.nn.lora) absent from a base checkpoint keep their initialisation
    adapters = {n for n in set(own) - set(weights) if is_adapter(n)}
    missing, unexpected = sorted(set(own) - set(weights) - adapters), sorted(set(weights) - set(own))
    if missing or unexpected:
        what = f"lacks net.{missing[0]}" if missing else f"has net.{unexpected[0]}, which model.net lacks"
        raise ConfigError(f"{where}: {what}: give model.net the checkpoint's network settings")
    net.load_state_dict(weights, strict=not adapters)


# ---------------------------------------------------------------------- the shared methods


class TokenTraining:
    """Methods of a token LightningModule with a ``net``, an ``optimizer`` callable, a ``vocabulary``
    and the hyperparameters ``weight_decay``, ``warmup_steps``, ``lr_decay_steps``, ``min_lr``,
    ``compile`` and ``init_from`` (documented on ``ar.module.NextToken``). Mixed in before
    ``LightningModule``."""

    configure_gradient_clipping = configure_gradient_clipping  # gradient_clip_val by norm under FSDP too

    def setup(self, stage: str) -> None:
        # Before Lightning restores a --ckpt_path, so a resumed fine-tuning run keeps its own weights.
        if stage == "fit" and self.hparams.get("init_from"):
            load_net_weights(self.net, self.hparams.init_from)

    def configure_optimizers(self):
        optimizer = self.optimizer(parameter_groups(self.net, self.hparams.weight_decay))
        warmup, decay_steps = self.hparams.warmup_steps, self.hparams.lr_decay_steps
        if decay_steps is None and self._trainer is not None and (self.trainer.max_steps or 0) > 0:
            decay_steps = self.trainer.max_steps
        if warmup <= 0 and decay_steps is None:
            return optimizer
        lr = optimizer.defaults["lr"]
        min_lr = lr / 10 if self.hparams.min_lr is None else self.hparams.min_lr

        def factor(step: int) -> float:  # LambdaLR multiplies each group's initial LR (all equal lr)
            return nanogpt_lr(step, lr, warmup, decay_steps, min_lr) / lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def decode(self, ids: Tensor) -> list[str]:
        """(B, T) token ids -> B strings through the vocabulary (the data module's ``decode`` does
        the same for char data; this one needs no data)."""
        if self.vocabulary is None:
            raise ConfigError("decode needs model.vocabulary (linked from character-level data)")
        return ["".join(self.vocabulary[i] for i in row) for row in ids.tolist()]

    # ------------------------------------------------------------------ helpers

    def _training_net(self) -> nn.Module:
        if not self.hparams.get("compile"):
            return self.net
        if self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.net)
        return self._compiled

    def _encode_text(self, text: str) -> list[int]:
        """Greedy longest match of the vocabulary's symbols (one character each for char data)."""
        ids = {s: i for i, s in enumerate(self.vocabulary)}
        longest = max(len(s) for s in self.vocabulary)
        out, i, unknown = [], 0, []
        while i < len(text):
            for length in range(min(longest, len(text) - i), 0, -1):
                if text[i : i + length] in ids:
                    out.append(ids[text[i : i + length]])
                    i += length
                    break
            else:
                unknown.append(text[i])
                i += 1
        if unknown:
            shown = "".join(sorted(set(unknown)))
            raise ConfigError(
                f"model.sampling.prompt has characters outside the vocabulary: {shown!r}; use only the "
                "training text's characters"
            )
        return out
