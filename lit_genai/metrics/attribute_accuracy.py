"""Attribute accuracy: how often a text-to-image model draws the attributes its caption asked for.

    attr_acc = Σ_i Σ_a [asked_ia ≥ 0] [argmax_k logits_a(x_i)_k = asked_ia] / Σ_i Σ_a [asked_ia ≥ 0]

where x_i is the image generated for caption i, asked_ia the index of the value the caption gives
attribute a (-1: not asked), and ``logits_a`` the head of an attribute classifier of the data's
domain (``lit_genai.metrics.attributes``; ``lit_genai.metrics.features.AttributeFeatures``). Per
attribute, ``attr_acc_<a>`` is the same sum over one column. It is the conditioning accuracy of
class-conditional models (AC-GAN's, Odena et al. 2017) taken apart into the caption's attributes, as
detector-based text-to-image scores do (GenEval, Ghosh et al. 2023). The classifier's accuracy on
real images is its ceiling, chance is 1/K_a per attribute. For two-shape data every slot of the
caption is asked: an absent second shape asks for the value "none".

``split_items`` reads the captions and asked attributes of a data split's items (the Evaluation
callback draws sample i with the caption of item i), and ``AttributeScores`` collects one rank's
predictions and gathers every rank's under DDP (``lit_genai.metrics.gather``).

Shape legend: N samples, A attributes, K_a values of attribute a.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from lit_genai.metrics.gather import all_gather_rows


def predictions(logits: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """{attribute: (N, K_a) logits} -> (N, A) int64 arg-max value indices, columns in ``names`` order."""
    return torch.stack([logits[name].argmax(-1) for name in names], dim=1)  # (N, A)


def prediction_accuracy(predicted: Tensor, asked: Tensor, names: Sequence[str], key: str) -> dict[str, float]:
    """``{key: pooled accuracy, f"{key}_{name}": accuracy of each attribute}`` from predicted (N, A)
    and asked (N, A) value indices; entries of ``asked`` below 0 are not asked. An attribute nobody
    asked has no key; with nothing asked at all there are no keys."""
    asked = asked.to(predicted.device)
    mask = asked >= 0  # (N, A)
    hits = (predicted == asked) & mask  # (N, A)
    out: dict[str, float] = {}
    if mask.any():
        out[key] = float(hits.sum() / mask.sum())
    for column, name in enumerate(names):
        if mask[:, column].any():
            out[f"{key}_{name}"] = float(hits[:, column].sum() / mask[:, column].sum())
    return out


def attribute_accuracy(
    logits: Mapping[str, Tensor], asked: Tensor, names: Sequence[str], key: str = "attr_acc"
) -> dict[str, float]:
    """Attribute accuracy of N images from the classifier's logits {attribute: (N, K_a)} and the asked
    value indices (N, A) (columns in ``names`` order, -1 = not asked); keys as ``prediction_accuracy``."""
    return prediction_accuracy(predictions(logits, names), asked, names, key)


def split_items(dataset: Any, indices: Sequence[int], attributes: bool) -> tuple[list[str], Optional[Tensor]]:
    """The captions of items ``i % len(dataset)`` of a split of ``(image, attrs, caption)`` items (the
    caption is the last element) and, if ``attributes``, their attributes stacked as (n, A) int64."""
    items = [dataset[int(i) % len(dataset)] for i in indices]
    captions = [str(item[-1]) for item in items]
    asked = torch.stack([torch.as_tensor(item[1]).long() for item in items]) if attributes else None  # (n, A)
    return captions, asked


def has_captions(dataset: Any) -> bool:
    """Whether a split's items end with a caption string (text-conditioned data)."""
    if dataset is None or len(dataset) == 0:
        return False
    item = dataset[0]
    return isinstance(item, (tuple, list)) and isinstance(item[-1], str)


class AttributeScores:
    """One rank's predictions for the images it generated; ``compute`` gathers every rank's.

    Args:
        names: The data's attributes, in the order of its ``attrs`` columns.
        key: Metric key stem, e.g. ``"attr_acc_shapes"`` or ``"attr_acc_heldout_shapes"``.
    """

    def __init__(self, names: Sequence[str], key: str) -> None:
        self.names, self.key = tuple(names), key
        self.predicted: list[Tensor] = []
        self.asked: list[Tensor] = []
        self.num_scored = 0  # images in the last compute(), over all ranks

    def update(self, logits: Mapping[str, Tensor], asked: Tensor) -> None:
        """Add the logits {attribute: (n, K_a)} of n generated images and what they were asked (n, A)."""
        self.predicted.append(predictions(logits, self.names).cpu())
        self.asked.append(asked.long().cpu())

    def compute(self, device: torch.device) -> dict[str, float]:
        """The accuracies over every rank's images: a collective call under DDP (every rank calls it,
        also a rank that generated nothing); gathers on ``device`` (the process group's: CUDA under NCCL)."""
        empty = torch.zeros(0, len(self.names), dtype=torch.long)
        predicted = all_gather_rows(torch.cat([empty, *self.predicted]).to(device))  # (N, A)
        asked = all_gather_rows(torch.cat([empty, *self.asked]).to(device))  # (N, A)
        self.num_scored = int(predicted.shape[0])
        self.predicted, self.asked = [], []
        return prediction_accuracy(predicted, asked, self.names, self.key)
