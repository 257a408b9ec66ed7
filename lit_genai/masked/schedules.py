"""Mask schedules gamma(r) of masked-token models (pure functions).

Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer": sec. 3.2 trains with
ceil(gamma(r) N) of the N tokens masked, r ~ U[0, 1), and decodes in T steps, keeping
gamma((t + 1) / T) of the unknown tokens masked after step t; sec. 4.3 compares the
schedules: concave ones (cosine, square, cubic, exponential) do better than linear, convex ones
(square root, logarithmic) worse; cosine is the paper's choice.

Every schedule maps r in [0, 1] to gamma(r) in [0, 1] with gamma(0) = 1 (everything masked),
gamma(1) = 0 (nothing masked), monotone non-increasing:

    cosine   cos(pi r / 2)
    linear   1 - r
    square   1 - r^2
    cubic    1 - r^3
    sqrt     1 - sqrt(r)
    log      -log_b(1/b + (1 - 1/b) r)
    exp      (b - b^r) / (b - 1)

The reference code's (maskgit ``libml/mask_schedule.py``) logarithmic and exponential schedules
depend on the number of tokens b: -log_b(r) is 1 at r = 1/b (and infinite at 0), and 1 - b^(r - 1)
is 1 - 1/b at r = 0, both then clipped to [1e-6, 1]. Here they are normalised to exact endpoints:
``log`` is the reference formula at r' = 1/b + (1 - 1/b) r (which maps [0, 1] onto [1/b, 1]),
``exp`` the reference formula divided by 1 - 1/b. b = ``LOG_BASE`` = 256, the 16 x 16 tokens of
the paper's 256 x 256 ImageNet model, so the shapes are those compared in sec. 4.3.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

Schedule = Literal["cosine", "linear", "square", "cubic", "sqrt", "log", "exp"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)

LOG_BASE = 256.0
"""b of the ``log`` and ``exp`` schedules: the token count of MaskGIT's 256 x 256 ImageNet model."""


def mask_schedule(r: Tensor, name: Schedule = "cosine") -> Tensor:
    """gamma(r): the share of tokens masked at progress r (module docstring; MaskGIT sec. 3.2).

    Args:
        r: progress in [0, 1], any shape (values outside are clamped into it).
        name: one of ``SCHEDULES``.

    Returns:
        gamma(r) in [0, 1], of r's shape and (floating) dtype.
    """
    r = torch.as_tensor(r)
    r = (r if r.is_floating_point() else r.double()).clamp(0.0, 1.0)
    b = LOG_BASE
    if name == "cosine":
        gamma = torch.cos(0.5 * math.pi * r)
    elif name == "linear":
        gamma = 1.0 - r
    elif name == "square":
        gamma = 1.0 - r**2
    elif name == "cubic":
        gamma = 1.0 - r**3
    elif name == "sqrt":
        gamma = 1.0 - torch.sqrt(r)
    elif name == "log":
        gamma = -torch.log(1.0 / b + (1.0 - 1.0 / b) * r) / math.log(b)
    elif name == "exp":
        gamma = (b - torch.pow(torch.full_like(r, b), r)) / (b - 1.0)
    else:
        raise ConfigError(f"mask schedule {name!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    # Exact endpoints: in floating point cos(pi / 2) is 6e-17, not 0.
    return torch.where(r >= 1.0, 0.0, gamma.clamp(0.0, 1.0))


def num_to_mask(r: Tensor, N: int, name: Schedule = "cosine") -> Tensor:
    """How many of N tokens a training example masks: ceil(gamma(r) N), clamped to [1, N].

    MaskGIT sec. 3.2: r ~ U[0, 1) per example, then ceil(gamma(r) N) random positions are masked;
    at least one token is always masked, so every example has a loss term.

    Args:
        r: (B,) progress values in [0, 1).
        N: number of tokens per sequence.
        name: the schedule.

    Returns:
        (B,) int64 counts in [1, N].
    """
    gamma = mask_schedule(torch.as_tensor(r).double(), name)  # float64: ceil of an exact product
    return torch.ceil(gamma * N).long().clamp(1, N)
