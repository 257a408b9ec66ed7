"""The augmentation experiment as a plain loop: a classifier trained on real images alone, and on the
same real images plus generated ones, scored on real held-out images.

A *cell* is (real images per class r, synthetic-to-real ratio q, seed s). It draws r real training
images of each class and round(q * r) generated ones of each class from a model's synthetic pool
(``lit_genai.augment.pool``), trains the domain classifier on their union with
``lit_genai.metrics.classifier.cas.train_classifier`` (the CAS trainer of Ravuri & Vinyals 2019) and
scores it with ``cas.accuracy`` on the test images, overall and per class. q = 0 is the real-only
baseline; with several models it is trained once and shared.

Fairness, by design:

- **Paired draws.** The seed fixes one random order of each class's real images, one of each class's
  pool images and the classifier's initial weights; a cell takes the first r (or round(q * r)) of each
  order. So the real images of (r, s) are the same at every ratio and for every model, the subsets are
  nested (10 in 50 in 400), and a ratio's effect is read on the same real images and the same start.
- **One schedule per row.** Every cell with the same r trains for the same number of Adam steps along
  the same cosine decay, whatever q (``Training.steps``): ``epochs`` passes over the row's largest
  mix, r * K * (1 + max q) images, and at least ``min_steps``. With the same number of *epochs* a
  ratio of 3 would get four times the updates, and a gain could come from the longer training rather
  than from the data: equal steps keeps the compute fixed and varies the data alone.
- **Held-out real test images.** ``test`` is scored and never drawn from; the command passes the
  test split of the data, disjoint from the ``real`` training pool.

Shape legend: N images, K classes, C/H/W image. Images are float in [-1, 1], labels int64.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.metrics.classifier.cas import accuracy, train_classifier

REAL_ONLY = "real only"  # the model name of the q = 0 cells' key: they use no model


class Images(NamedTuple):
    """Labelled images: ``images`` (N, C, H, W) float in [-1, 1], ``labels`` (N,) int64, and
    ``identity``, a string that says what decides them (part of a cell's cache key)."""

    images: Tensor
    labels: Tensor
    identity: str = ""


@dataclasses.dataclass(frozen=True)
class Training:
    """How each cell's classifier is trained (``cas.train_classifier``: Adam 2e-3, cosine decay, random
    shifts of 2 pixels). The defaults are the measured sweep's (README, "Generated data as
    augmentation"): a half-width ``DomainClassifier`` (7x cheaper on a CPU than the shipped one; 99.0%
    on the test digits from 400 real per class) and a budget that converges; with 150 / 500 steps the
    real-only classifiers were 2-5 points worse and the comparison read differently.

    Args:
        epochs: Passes over the largest training set of a row (r real + max q * r synthetic images
            per class); every cell of the row trains for that many steps.
        min_steps: The fewest Adam steps a cell trains for (small rows would else get a handful).
        batch_size: Images per Adam step.
        width: The ``DomainClassifier``'s first-stage channels; its feature width is 4 * width.
        device: Where the classifier trains ("cpu", "cuda").
    """

    epochs: int = 6
    min_steps: int = 600
    batch_size: int = 64
    width: int = 16
    device: str = "cpu"

    def steps(self, real_per_class: int, num_classes: int, max_ratio: float) -> int:
        """The Adam steps of every cell in the row of ``real_per_class``."""
        largest = real_per_class * num_classes + num_classes * round(max_ratio * real_per_class)
        return max(self.min_steps, math.ceil(self.epochs * largest / self.batch_size))


def class_orders(labels: Tensor, num_classes: int, generator: torch.Generator) -> list[Tensor]:
    """One random order of each class's indices into ``labels``: K tensors of indices."""
    return [
        (labels == k).nonzero().flatten()[torch.randperm(int((labels == k).sum()), generator=generator)]
        for k in range(num_classes)
    ]


def take(orders: Sequence[Tensor], per_class: int, what: str) -> Tensor:
    """The first ``per_class`` indices of each class's order, concatenated; too few is one line."""
    short = [k for k, order in enumerate(orders) if len(order) < per_class]
    if short:
        raise ConfigError(
            f"{per_class} {what} images per class asked, but class {short[0]} has "
            f"{len(orders[short[0]])}: lower --real_per_class or --ratios"
        )
    return torch.cat([order[:per_class] for order in orders])


def draw_cell(
    real_labels: Tensor,
    pool_labels: Optional[Tensor],
    real_per_class: int,
    ratio: float,
    seed: int,
    num_classes: int,
) -> tuple[Tensor, Tensor]:
    """Indices of a cell's real images (into the real pool) and synthetic images (into the model's
    pool): r and round(q * r) per class, the first of the seed's orders (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    real = take(class_orders(real_labels, num_classes, generator), real_per_class, "real")
    synthetic_per_class = round(ratio * real_per_class)
    if synthetic_per_class == 0 or pool_labels is None:
        return real, torch.zeros(0, dtype=torch.long)
    # drawn after the real orders from the same generator: depends on the seed only, not on r or q
    synthetic = take(class_orders(pool_labels, num_classes, generator), synthetic_per_class, "synthetic")
    return real, synthetic


def per_class_accuracy(net: nn.Module, test: Images, num_classes: int) -> list[Optional[float]]:
    """``cas.accuracy`` on each class's test images (None for a class with none)."""
    return [
        accuracy(net, test.images[test.labels == k], test.labels[test.labels == k])
        if bool((test.labels == k).any())
        else None
        for k in range(num_classes)
    ]


def run_cell(
    real: Images,
    pool: Optional[Images],
    test: Images,
    *,
    real_per_class: int,
    ratio: float,
    seed: int,
    steps: int,
    training: Training,
    num_classes: int,
    train: Callable[..., nn.Module] = train_classifier,
) -> dict[str, Any]:
    """Train and score one cell; returns its row (counts per class, steps, accuracies, seconds)."""
    began = time.monotonic()
    real_index, synthetic_index = draw_cell(
        real.labels, None if pool is None else pool.labels, real_per_class, ratio, seed, num_classes
    )
    parts = [(real.images[real_index], real.labels[real_index])]
    if len(synthetic_index):
        parts.append((pool.images[synthetic_index], pool.labels[synthetic_index]))
    x = torch.cat([images for images, _ in parts]).to(training.device)  # (N, C, H, W)
    y = torch.cat([labels for _, labels in parts]).to(training.device)  # (N,)
    net = train(
        x,
        y,
        num_classes,
        steps=steps,
        batch_size=training.batch_size,
        width=training.width,
        feature_dim=4 * training.width,
        seed=seed,
    )
    per_class = per_class_accuracy(
        net, Images(test.images.to(x.device), test.labels.to(x.device)), num_classes
    )
    counts = torch.bincount(test.labels, minlength=num_classes).tolist()
    # the test set's accuracy is its classes' weighted by their sizes: no second pass over the images
    overall = sum(a * n for a, n in zip(per_class, counts, strict=True) if a is not None) / max(
        len(test.labels), 1
    )
    return {
        "real_per_class": real_per_class,
        "ratio": ratio,
        "seed": seed,
        "real_counts": torch.bincount(real.labels[real_index], minlength=num_classes).tolist(),
        "synthetic_counts": torch.bincount(
            pool.labels[synthetic_index] if len(synthetic_index) else torch.zeros(0, dtype=torch.long),
            minlength=num_classes,
        ).tolist(),
        "train_size": len(y),
        "steps": steps,
        "accuracy": overall,
        "per_class_accuracy": per_class,
        "seconds": round(time.monotonic() - began, 1),
    }


def cell_key(
    data: str, model: str, real_per_class: int, ratio: float, seed: int, steps: int, training: Training
) -> str:
    """A cell's cache key: what decides its result (JSON). ``data`` is the real and test images'
    identity, ``model`` a pool's identity or ``REAL_ONLY`` for the q = 0 cells."""
    # epochs and min_steps only decide the steps; the device changes nothing but rounding
    cell = {"real_per_class": real_per_class, "ratio": ratio, "seed": seed, "steps": steps}
    net = {"batch_size": training.batch_size, "width": training.width}
    return json.dumps({"data": data, "model": model, **cell, **net}, sort_keys=True)


def run_sweep(
    real: Images,
    pools: Mapping[str, Images],
    test: Images,
    *,
    real_per_class: Sequence[int],
    ratios: Sequence[float],
    seeds: Sequence[int],
    training: Training,
    num_classes: int,
    done: Optional[Mapping[str, dict[str, Any]]] = None,
    on_cell: Callable[[str, dict[str, Any]], None] = lambda key, row: None,
    train: Callable[..., nn.Module] = train_classifier,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every cell (r, q, s) for every model of ``pools`` ({name: pool}); one row per cell and model.

    ``done`` holds rows of cells already trained, by ``cell_key`` (a resumed sweep, or q = 0 cells
    shared with another model); ``on_cell(key, row)`` is called after each cell trained here.
    """
    done = dict(done or {})
    data = f"{real.identity} | {test.identity}"
    rows = []
    max_ratio = max(ratios)
    for model, pool in pools.items():
        for r in real_per_class:
            steps = training.steps(r, num_classes, max_ratio)
            for q in ratios:
                for seed in seeds:
                    model_identity = REAL_ONLY if q == 0 else pool.identity
                    key = cell_key(data, model_identity, r, q, seed, steps, training)
                    if key not in done:
                        done[key] = run_cell(
                            real,
                            pool,
                            test,
                            real_per_class=r,
                            ratio=q,
                            seed=seed,
                            steps=steps,
                            training=training,
                            num_classes=num_classes,
                            train=train,
                        )
                        on_cell(key, done[key])
                        cell = done[key]
                        log(
                            f"  {model}: {r} real/class, ratio {q:g}, seed {seed}: accuracy "
                            f"{100 * cell['accuracy']:.1f}% ({steps} steps, {cell['seconds']:.0f} s)"
                        )
                    rows.append({"model": model, **done[key]})
    return rows
