"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019), as pure functions.

Kynkäänniemi, Karras, Laine, Lehtinen, Aila 2019, "Improved Precision and Recall Metric for
Assessing Generative Models": k-NN hyperspheres around each feature vector approximate the real and
the generated manifolds; precision is the share of generated vectors inside the real manifold,
recall the share of real vectors inside the generated one.

torchmetrics (1.9) has no improved precision / recall, so it lives here, following the authors'
reference (github.com/kynkaat/improved-precision-and-recall-metric): pairwise Euclidean distances
in feature space, radius = distance to the k-th nearest neighbour (the point itself excluded), a
point is "covered" when it lies within the radius of at least one point of the other set.
``lit_genai.metrics.fid.FeaturePrecisionRecall`` wraps them in a DDP-safe torchmetrics Metric.

Shape legend: N real feature vectors, M generated feature vectors, D feature width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

__all__ = ["covered", "knn_radii", "precision_recall"]


def knn_radii(x: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """(N, D) -> (N,) distance from each row of ``x`` to its k-th nearest other row.

    Computed in (chunk, chunk) blocks of ``torch.cdist`` so memory stays O(chunk²) for any N.
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise ConfigError(f"precision/recall with k={k} needs more than k feature vectors, got {n}")
    radii = []
    for i, rows in enumerate(x.split(chunk)):
        best = rows.new_empty(rows.shape[0], 0)  # (b, <=k) smallest distances so far
        for j, cols in enumerate(x.split(chunk)):
            d = torch.cdist(rows, cols)  # (b, c)
            if i == j:
                d.fill_diagonal_(math.inf)  # a point is not its own neighbour
            best = torch.cat([best, d], dim=1)  # (b, <=k + c)
            best = best.topk(min(k, best.shape[1]), dim=1, largest=False).values  # (b, <=k)
        radii.append(best[:, k - 1])  # (b,)
    return torch.cat(radii)  # (N,)


def covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """(M,) bool: whether each of ``points`` (M, D) lies within ``radii[i]`` of some ``centres[i]`` (N, D)."""
    out = []
    for rows in points.split(chunk):
        inside = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)  # (b,)
        for cols, r in zip(centres.split(chunk), radii.split(chunk), strict=True):
            inside |= (torch.cdist(rows, cols) <= r).any(dim=1)  # (b, c) -> (b,)
        out.append(inside)
    return torch.cat(out)  # (M,)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-3) of ``fake`` against ``real``.

    Precision: fraction of generated vectors inside the real manifold (the union of balls around
    each real vector with radius its k-th nearest real neighbour); recall: fraction of real vectors
    inside the generated manifold, built the same way. The paper uses k = 3.

    Args:
        real: (N, D) real features.
        fake: (M, D) generated features.
        k: Neighbour whose distance sets each ball's radius.
        chunk: Rows and columns per ``torch.cdist`` block (memory is about 4·chunk² bytes).

    Returns:
        (precision, recall), each in [0, 1].
    """
    real, fake = real.float(), fake.float().to(real.device)
    precision = covered(fake, real, knn_radii(real, k, chunk), chunk).float().mean()
    recall = covered(real, fake, knn_radii(fake, k, chunk), chunk).float().mean()
    return float(precision), float(recall)
