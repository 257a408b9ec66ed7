"""Conditions: what a sample is asked to be, as a mapping of named tensors (docs/architecture.md,
"Conditions").

``cond`` in ``module.sample(n, cond=...)`` and in a module's training batch is a mapping from a
condition's name to its value for each of the n rows:

========  ===============================================  ==========================================
name      value                                            who provides it today
========  ===============================================  ==========================================
label     (n,) int64 class indices                         labelled image, text and audio data
mels      (n, n_mels, frames) log-mel frames               ``data.audio`` with ``mels: true``
text      n strings, or (n, L) token ids                   (captioned data: text-to-image)
image     (n, C, H, W) source images in [-1, 1]            (paired data: image-to-image)
mask      (n, 1, H, W) bool, True where to fill            (inpainting)
audio     (n, T) waveforms                                 (speech prompts)
========  ===============================================  ==========================================

A bare tensor means ``{"label": tensor}``, so class-conditional code written before conditions had
names keeps working. A data module says which conditions its batches carry (``conditions``
attribute, or ``("label",)`` when it has classes); a module says which it uses (``conditions``); the
command line stops before the first step when a module needs one the data lacks
(``check_conditions``). A condition the data has and the module does not use is ignored: an
unconditional model of labelled data is fine.

Classifier-free guidance (Ho & Salimans 2022) trains the unconditional model alongside by dropping
conditions: ``condition_dropout`` turns a module's ``p_uncond`` (one probability for every
condition, or one per name) into per-name probabilities, and ``drop_conditions`` replaces each row's
condition by that condition's null value with its probability. Each draw is this rank's slice of a
world-sized draw (``paradigm.this_rank``).

Shape legend: B batch (n samples).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.paradigm import Generators, randint, this_rank

CONDITIONS: tuple[str, ...] = ("label", "text", "image", "mask", "audio", "mels")
"""The names a condition may have (new kinds of data add a name here and an encoder in ``nn/``)."""

Cond = Union[Tensor, Mapping[str, Any], None]
"""What ``sample(cond=...)`` takes: a mapping of named conditions, a bare (n,) label tensor, or None."""

DropoutProbability = Union[float, dict[str, float]]
"""``p_uncond``: one probability for every condition a module uses, or one per condition name."""


def as_conditions(
    cond: Cond, accepted: Sequence[str] = CONDITIONS, owner: str = "sample()"
) -> dict[str, Any]:
    """``cond`` as a plain dict of named conditions: None -> {}, a tensor -> {"label": tensor}.

    A name outside ``accepted`` (the conditions the module uses) is one ``ConfigError`` line
    naming the accepted ones, so a typo or a condition the model was not trained on is not
    silently ignored.
    """
    if cond is None:
        return {}
    if isinstance(cond, Tensor):  # bare labels: checked like {"label": labels}
        cond = {"label": cond}
    if not isinstance(cond, Mapping):
        raise ConfigError(
            f"{owner}: cond must be a mapping of named conditions (e.g. {{'label': labels}}) or a label "
            f"tensor, got {type(cond).__name__}"
        )
    unknown = sorted(set(cond) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none (an unconditional model)"
        raise ConfigError(f"{owner}: unknown condition(s) {', '.join(unknown)}; this model takes: {allowed}")
    return {name: value for name, value in cond.items() if value is not None}


def labels_of(module: Any, cond: Cond) -> Optional[Tensor]:
    """The (n,) class labels in ``cond`` for ``module.sample()`` (None when there are none), for
    modules conditioned on labels only: any name outside ``module.conditions`` (``("label",)`` or
    none) is one ``ConfigError`` line, so an unconditional model refuses labels rather than silently
    ignoring them."""
    return as_conditions(cond, module.conditions, f"{type(module).__name__}.sample()").get("label")


def sample_labels(
    n: int, num_classes: int, labels: Optional[Tensor], generator: Generators, device: torch.device
) -> Optional[Tensor]:
    """(n,) labels for a class-conditional sample: the given ones, else uniform draws (row i from
    ``generator[i]`` when there is one generator per sample); None for an unconditional model."""
    if num_classes <= 0:
        return None
    if labels is None:
        return randint(num_classes, n, generator, device)
    return labels.to(device, torch.long)


def condition_dropout(
    p_uncond: DropoutProbability, used: Sequence[str], owner: str = "model"
) -> dict[str, float]:
    """``p_uncond`` as {name: probability} over the conditions ``used``: a float applies to each; a
    mapping names its own (names the module does not use are one ``ConfigError`` line)."""
    if isinstance(p_uncond, Mapping):
        unknown = sorted(set(p_uncond) - set(used))
        if unknown:
            raise ConfigError(
                f"{owner}.p_uncond names {', '.join(unknown)}, which the model does not use "
                f"(it uses: {', '.join(used) or 'none'})"
            )
        probabilities = {name: float(p) for name, p in p_uncond.items()}
    else:
        probabilities = {name: float(p_uncond) for name in used}
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{owner}.p_uncond for {name!r} is {p}: a probability in [0, 1]")
    return probabilities


def drop_conditions(
    cond: Mapping[str, Tensor],
    probabilities: Mapping[str, float],
    nulls: Mapping[str, Tensor],
    trainer: Any = None,
) -> dict[str, Tensor]:
    """Classifier-free guidance's condition dropout (Ho & Salimans 2022, Algorithm 1, line 3).

    Each row's condition ``name`` becomes ``nulls[name]`` (broadcast to the row) with probability
    ``probabilities[name]``, independently per name, in the order of ``probabilities``; one uniform
    draw per row and name, this rank's slice of a world-sized draw. Conditions without a probability
    (or with 0) are returned as they are. (B, ...) -> (B, ...).
    """
    out = dict(cond)
    for name, p in probabilities.items():
        value = out.get(name)
        if value is None or p <= 0:
            continue
        B = value.shape[0]
        u = this_rank(lambda n, device=value.device: torch.rand(n, device=device), B, trainer)  # (B,)
        drop = (u < p).view(B, *([1] * (value.dim() - 1)))  # (B, 1, ...)
        out[name] = torch.where(drop, nulls[name].to(value), value)
    return out


def drop_labels(
    labels: Optional[Tensor], probabilities: Mapping[str, float], num_classes: int, trainer: Any = None
) -> Optional[Tensor]:
    """``drop_conditions`` for class labels (B,): each becomes the null label ``num_classes`` with
    probability ``probabilities["label"]`` (if given). None stays None."""
    if labels is None or not probabilities.get("label"):
        return labels
    null = labels.new_full((), num_classes)  # filled on the device: no host-to-device copy per step
    return drop_conditions({"label": labels}, probabilities, {"label": null}, trainer)["label"]


def provided_conditions(datamodule: Any) -> tuple[str, ...]:
    """The conditions a data module's batches carry: its ``conditions`` attribute, else ``("label",)``
    when it has classes (``num_classes > 0``), else none."""
    declared = getattr(datamodule, "conditions", None)
    if declared is not None:
        return tuple(declared)
    return ("label",) if int(getattr(datamodule, "num_classes", 0) or 0) > 0 else ()


def check_conditions(module: Any, datamodule: Any) -> None:
    """One ``ConfigError`` line when ``module`` uses a condition that ``datamodule`` does not provide
    (a class-conditional network on unlabelled data, a vocoder without its mel frames)."""
    if datamodule is None:
        return
    used = tuple(getattr(module, "conditions", ()) or ())
    provided = provided_conditions(datamodule)
    missing = [name for name in used if name not in provided]
    if missing:
        data = type(datamodule).__name__
        have = ", ".join(provided) if provided else "none"
        fix = "an unconditional network (num_classes: 0)" if missing == ["label"] else "a network without it"
        raise ConfigError(
            f"the model ({type(module).__name__}) is conditioned on {', '.join(missing)} but the data "
            f"({data}) provides {have}: use data that provide it, or {fix}"
        )
