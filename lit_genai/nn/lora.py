"""LoRA: low-rank adapters on the linear projections of a network (fine-tuning with few weights).

Paper: Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (sec. 4.1): a frozen
weight W (out, in) gets a trainable update (alpha / r) B A with A (r, in), B (out, r), so
``y = W x + b + (alpha / r) B A dropout(x)``. A starts Kaiming-uniform and B at zero, so the adapted
network starts as the base network exactly; only A and B train.

Own code rather than ``peft`` (whose ``inject_adapter_in_model`` also works on plain modules) because
``LoRALinear`` subclasses ``nn.Linear`` and keeps its ``weight`` / ``bias`` Parameters under the same
names: the state dict of an adapted ``GPT`` is the base one plus ``<layer>.lora_A`` / ``lora_B``
(peft renames the base weight ``<layer>.base_layer.weight``), so ``init_from``, GPT-2 loading, the
weight-decay groups (chosen by layer type and leaf name), EMA and the exporters see the usual names,
and no run-time dependency is added.

Use: ``NextToken(lora=LoRAConfig(...))`` (YAML ``model.init_args.lora: {rank: 8, alpha: 16, ...}``)
applies ``apply_lora`` to its net. ``merged(net)`` folds the adapters into the weights for sampling
(and restores the exact base weights afterwards); ``merged_copy(net)`` is a plain network for export;
``save_adapters`` / ``load_adapters`` keep the adapters alone with a pointer to the base model.

Shape legend: B batch, T tokens, I in features, O out features, r rank.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError

ADAPTER_LEAVES = ("lora_A", "lora_B")  # the parameter names a LoRALinear adds to nn.Linear's
FORMAT = "lit_genai.lora/1"  # the ``format`` entry of an adapter file


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2022) on a network's linear layers.

    Args:
        rank: r, the rank of each update B A.
        alpha: The update is scaled by alpha / r (the paper keeps alpha fixed while varying r).
        dropout: Dropout on the adapter's input (not on the frozen path).
        targets: Names of the ``nn.Linear`` layers to adapt: the last component of the module name
            (``c_attn``, ``c_proj`` and ``c_fc`` are GPT's attention and MLP projections; ``c_proj``
            names both the attention output and the MLP output) or a full dotted name
            (``transformer.h.0.attn.c_attn``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"model.lora.rank={self.rank}: give a rank of at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout={self.dropout}: give a probability in [0, 1)")
        if not self.targets:
            raise ConfigError("model.lora.targets is empty: name the linear layers to adapt, e.g. [c_attn]")
        object.__setattr__(self, "targets", tuple(self.targets))  # YAML lists -> a hashable tuple

    @classmethod
    def of(cls, value: Union[LoRAConfig, dict[str, Any]]) -> LoRAConfig:
        """A config from itself or its plain dict (as a checkpoint's hyperparameters keep it)."""
        return value if isinstance(value, cls) else cls(**dict(value))

    def plain(self) -> dict[str, Any]:
        """Plain values (for hyperparameters: ``torch.load(weights_only=True)`` reads them)."""
        return {**asdict(self), "targets": list(self.targets)}


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update: ``y = x W^T + b + (alpha / r) dropout(x) A^T B^T``.

    Keeps ``weight`` and ``bias`` (frozen by ``apply_lora``) under nn.Linear's names and adds
    ``lora_A`` (r, I), ``lora_B`` (O, r). ``merge`` / ``unmerge`` add / subtract the update into the
    weight in place; ``merged(net)`` does it for a block of code and restores the weight bit for bit.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, I)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # (O, r): zero, so the start is the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weights (Hu et al. sec. 4.1)
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False

    @classmethod
    def wrap(cls, linear: nn.Linear, config: LoRAConfig) -> LoRALinear:
        """An adapted layer that shares ``linear``'s weight and bias Parameters (tying survives)."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, rank=config.rank,
            alpha=config.alpha, dropout=config.dropout,
        )  # fmt: skip
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        return layer

    def delta(self) -> Tensor:
        """The weight update (alpha / r) B A, (O, I)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:  # (..., I) -> (..., O)
        y = F.linear(x, self.weight, self.bias)
        if self.merged:  # the update is in the weight already
            return y
        return y + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.add_(self.delta().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (rounding may leave the weight a few ulp off; ``merged`` does not)."""
        if self.merged:
            self.weight.sub_(self.delta().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def lora_layers(net: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of ``net`` by module name."""
    return {name: m for name, m in net.named_modules() if isinstance(m, LoRALinear)}


def is_adapter(name: str) -> bool:
    """Whether a parameter / state-dict name is a LoRA adapter's."""
    return name.rpartition(".")[2] in ADAPTER_LEAVES


def apply_lora(net: nn.Module, config: LoRAConfig) -> nn.Module:
    """Replace ``net``'s targeted ``nn.Linear`` layers by ``LoRALinear`` (in place) and freeze every
    other parameter: only the adapters train (Hu et al. 2022, sec. 4). Returns ``net``.

    A config that targets no linear layer is one ``ConfigError`` line listing the layer names.
    """
    targets = set(config.targets)
    chosen = [
        (name, m)
        for name, m in net.named_modules()
        if type(m) is nn.Linear and (name in targets or name.rpartition(".")[2] in targets)
    ]
    if not chosen:
        names = sorted({n.rpartition(".")[2] for n, m in net.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"model.lora.targets={list(config.targets)} matches no nn.Linear layer of model.net; "
            f"its linear layers are named {names}"
        )
    for name, linear in chosen:
        parent_name, _, leaf = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, leaf, LoRALinear.wrap(linear, config))
    for name, p in net.named_parameters():
        p.requires_grad_(is_adapter(name))
    return net


def trainable_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) parameters are counted once."""
    params = list(net.parameters())  # parameters() yields each shared Parameter once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@contextmanager
def merged(net: nn.Module) -> Iterator[nn.Module]:
    """The adapters folded into their weights inside the block (one matmul per layer instead of
    three, e.g. while sampling); on leaving, the exact base weights are put back. No-op for a net
    without adapters."""
    layers = [m for m in lora_layers(net).values() if not m.merged]
    saved = [m.weight.detach().clone() for m in layers]
    try:
        for m in layers:
            m.merge()
        yield net
    finally:
        with torch.no_grad():
            for m, weight in zip(layers, saved, strict=True):
                m.weight.copy_(weight)
                m.merged = False


def merged_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose adapted layers are plain ``nn.Linear`` with W + (alpha / r) B A: the
    network to export (no LoRA parameters, the base state-dict names). ``net`` is unchanged."""
    out = copy.deepcopy(net)
    for name, m in lora_layers(out).items():
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        linear.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(m.weight if m.merged else m.weight + m.delta().to(m.weight.dtype))
            if m.bias is not None:
                linear.bias.copy_(m.bias)
        linear.requires_grad_(m.weight.requires_grad)
        parent_name, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, leaf, linear)
    return out


# ---------------------------------------------------------------------- adapter files


def adapter_state(net: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors by state-dict name (``transformer.h.0.attn.c_attn.lora_A``, ...)."""
    return {n: t.detach().cpu().clone() for n, t in net.state_dict().items() if is_adapter(n)}


def save_adapters(module: nn.Module, path: Union[str, Path]) -> Path:
    """Write the adapters of ``module.net`` alone (kilobytes, not the whole model) with what rebuilds
    the rest: the LoRA config, ``base`` (the module's ``init_from`` checkpoint, None when the net
    itself carries the base weights, e.g. ``GPT2(folder=...)``) and ``net`` (the net's class_path
    config when the command line built it). Read by ``torch.load(weights_only=True)``."""
    net = getattr(module, "net", module)
    hparams = dict(getattr(module, "hparams", {}) or {})
    if not lora_layers(net):
        raise ConfigError("save_adapters: the model has no LoRA adapters (set model.init_args.lora)")
    lora = hparams.get("lora")
    payload = {
        "format": FORMAT,
        "lora": LoRAConfig.of(lora).plain() if lora is not None else None,
        "base": hparams.get("init_from"),
        "net": hparams.get("net") if isinstance(hparams.get("net"), (dict, str)) else None,
        "adapters": adapter_state(net),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_adapters(module: nn.Module, path: Union[str, Path]) -> dict[str, Any]:
    """Copy the adapters of a ``save_adapters`` file into ``module.net`` (which already holds the
    base weights and LoRA layers of the same rank and targets). Returns the file's entries other
    than the tensors (``lora``, ``base``, ``net``). Any mismatch is one ``ConfigError`` line."""
    net = getattr(module, "net", module)
    where = f"adapters file {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file; pass a file written by save_adapters")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{where}: not a LoRA adapter file (format {FORMAT}); pass one save_adapters wrote")
    own = {n: t for n, t in net.state_dict().items() if is_adapter(n)}
    theirs: dict[str, Tensor] = payload["adapters"]
    if set(own) != set(theirs):
        odd = sorted(set(own) ^ set(theirs))[0]
        raise ConfigError(
            f"{where}: adapter {odd} is in one of file and model only: use the same lora.targets"
        )
    for name, value in theirs.items():
        if own[name].shape != value.shape:
            raise ConfigError(
                f"{where}: {name} has shape {list(value.shape)} there but {list(own[name].shape)} here: "
                "use the same lora.rank"
            )
    stored: Optional[dict[str, Any]] = payload.get("lora")
    for name, m in lora_layers(net).items():
        if stored is not None and m.alpha != stored["alpha"]:
            raise ConfigError(
                f"{where}: lora.alpha={stored['alpha']} there but {m.alpha} here: use the same alpha"
            )
        if m.merged:
            raise ConfigError(f"{where}: {name} is merged; load adapters into an unmerged model")
    net.load_state_dict(theirs, strict=False)
    return {k: v for k, v in payload.items() if k != "adapters"}
