"""Adversarial attacks: FGSM and PGD in L-inf / L2 balls, and the geometry of those balls.

Pure tensor functions, no Lightning: ``fgsm`` (Goodfellow et al. 2015, "Explaining and Harnessing
Adversarial Examples") and ``pgd`` (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks") maximise a per-example ``Objective`` inside the L-inf or L2 ball of radius ``eps``
around each input, and inside the data's ``bounds``. Gradients are taken w.r.t. the input only
(``torch.autograd.grad``), so the parameters' ``.grad`` are untouched, and under ``torch.enable_grad()``,
so attacks also run inside ``no_grad`` validation. The networks' modes (train / eval) are left as the
caller set them. ``random_in_ball`` and ``random_on_sphere`` give the random start and the random-noise
baseline.

Images are float in [-1, 1] (docs/architecture.md, "Batches"): an MNIST eps of 0.3 in [0, 1] units is
0.6 here. Shape legend: B batch, then the example's own dimensions (...); D the number of values in one
example (C·H·W for images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Optional

import torch
from torch import Tensor

from lit_genai.errors import ConfigError, LitGenAIError

Objective = Callable[[Tensor], Tensor]  # x (B, ...) -> (B,) per-example value to MAXIMISE
Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")

_TINY = 1e-12  # guards the division by a zero gradient / perturbation norm


# ---------------------------------------------------------------------- geometry of the eps-balls


def check_norm(norm: str) -> None:
    """Raise a one-line ``ConfigError`` unless ``norm`` is one of ``NORMS``."""
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r} is not one of {NORMS}: choose 'linf' or 'l2'")


def _per_example_norm(v: Tensor) -> Tensor:
    """(B, ...) -> (B, 1, ..., 1) Euclidean norm of each example, broadcastable against ``v``."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _steepest_ascent(grad: Tensor, norm: str) -> Tensor:
    """The unit-norm direction of steepest ascent: sign(g) for L-inf, g / ||g||_2 for L2 (per example)."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_example_norm(grad).clamp_min(_TINY)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x`` (each example alone).

    L-inf: clamp each coordinate of x_adv - x to [-eps, eps]; L2: shrink x_adv - x to norm eps when it
    is longer. (B, ...) -> (B, ...).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_example_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
    return x + delta


def clamp_to_bounds(x: Tensor, bounds: Optional[tuple[float, float]]) -> Tensor:
    """``x`` clamped into ``bounds`` (low, high); unchanged when ``bounds`` is None. (B, ...) -> (B, ...)."""
    # Clamping into the box never leaves the eps-ball: it only moves coordinates towards the clean
    # input's (which lies inside the box), so |x_adv - x| shrinks coordinate-wise.
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def _uniform(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """U[0, 1) noise drawn on the generator's device (so a CPU generator gives the same on any device)."""
    noise_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=noise_device).to(device)


def _direction(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Uniform random directions on the unit L2 sphere, one per example: normalised Gaussians."""
    noise_device = generator.device if generator is not None else device
    g = torch.randn(shape, generator=generator, device=noise_device).to(device)
    return g / _per_example_norm(g).clamp_min(_TINY)


def random_in_ball(
    x: Tensor, eps: float, norm: str = "linf", generator: Optional[torch.Generator] = None
) -> Tensor:
    """A perturbation drawn uniformly from the ``norm`` ball of radius ``eps``, one per example.

    L-inf: U[-eps, eps] per coordinate. L2: a uniform direction times eps·U^(1/D), which is uniform in
    the D-dimensional ball (the volume inside radius r grows as r^D). (B, ...) -> (B, ...), without x.
    """
    check_norm(norm)
    shape = tuple(x.shape)
    if norm == "linf":
        return (2 * _uniform(shape, generator, x.device) - 1) * eps
    d = math.prod(shape[1:])
    radius = eps * _uniform((shape[0],), generator, x.device) ** (1.0 / d)  # (B,)
    return _direction(shape, generator, x.device) * radius.view(-1, *([1] * (x.dim() - 1)))


def random_on_sphere(
    x: Tensor, eps: float, norm: str = "linf", generator: Optional[torch.Generator] = None
) -> Tensor:
    """Random noise of exactly norm ``eps`` (the baseline a PGD attack of budget eps must beat).

    L-inf: a uniformly random sign times eps in every coordinate (a vertex of the eps-cube); L2: a
    uniform random direction with norm eps. (B, ...) -> (B, ...), without x.
    """
    check_norm(norm)
    shape = tuple(x.shape)
    if norm == "linf":
        return torch.where(_uniform(shape, generator, x.device) < 0.5, -eps, eps).to(x.dtype)
    return _direction(shape, generator, x.device) * eps


# ---------------------------------------------------------------------- attacks


def input_gradient(objective: Objective, x: Tensor) -> tuple[Tensor, Tensor]:
    """The objective's (B,) values at ``x`` and their gradient w.r.t. ``x`` alone, both detached.

    ``torch.autograd.grad`` differentiates only w.r.t. the input, so no parameter's ``.grad`` changes.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = objective(x)
        if value.dim() != 1 or value.shape[0] != x.shape[0]:
            raise LitGenAIError(
                f"an attack objective must return one value per example, shape ({x.shape[0]},); "
                f"got {tuple(value.shape)}"
            )
        if not value.requires_grad:
            raise LitGenAIError(
                "the attack objective does not depend differentiably on its input "
                "(e.g. discrete latents, or a no_grad inside the model): choose another objective"
            )
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach()


def fgsm(
    objective: Objective,
    x: Tensor,
    eps: float,
    *,
    norm: Norm = "linf",
    bounds: Optional[tuple[float, float]] = (-1.0, 1.0),
) -> Tensor:
    """Fast gradient (sign) method: one step of length ``eps`` along the objective's steepest ascent.

    Goodfellow et al. 2015, Section 4, for L-inf: x_adv = x + eps·sign(∇x J); for L2 the step is
    eps·∇x J / ||∇x J||_2 per example (the "fast gradient method").

    Args:
        objective: x (B, ...) -> (B,) values to maximise, differentiable w.r.t. x.
        x: Clean inputs (B, ...), inside ``bounds``.
        eps: Radius of the perturbation ball (in the units of x: [-1, 1] images).
        norm: ``"linf"`` or ``"l2"`` (per example).
        bounds: Valid input range, applied after the step; None for unbounded inputs.

    Returns:
        Detached adversarial inputs (B, ...), within ``eps`` of x and inside ``bounds``.
    """
    check_norm(norm)
    x = x.detach()
    if eps <= 0:
        return x.clone()
    _, grad = input_gradient(objective, x)
    return clamp_to_bounds(x + eps * _steepest_ascent(grad, norm), bounds).detach()


def pgd(
    objective: Objective,
    x: Tensor,
    eps: float,
    *,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: Optional[float] = None,
    random_start: bool = True,
    bounds: Optional[tuple[float, float]] = (-1.0, 1.0),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Projected gradient ascent on ``objective`` inside the ``norm`` ball of radius ``eps`` around x.

    Madry et al. 2018, Section 2.1: x_{t+1} = Π_{x+S}(x_t + α·sign(∇x J(x_t))) for L-inf; for L2 the
    step is α·∇x J / ||∇x J||_2 and Π shrinks the perturbation onto the L2 ball. Each iterate is
    clamped into ``bounds``. The random start is uniform in the ball (``random_in_ball``) and drawn from
    ``generator`` (any device; the global RNG when None). The last iterate is returned.

    Args:
        objective: x (B, ...) -> (B,) values to maximise, differentiable w.r.t. x.
        x: Clean inputs (B, ...), inside ``bounds``.
        eps: Radius of the perturbation ball (in the units of x: [-1, 1] images).
        norm: ``"linf"`` or ``"l2"`` (per example).
        steps: Number of gradient steps.
        step_size: Step length α; None = 2.5·eps/steps (Madry et al. 2018), which lets the iterates
            cross the ball from a random start.
        random_start: Start from a uniform random point of the ball instead of x.
        bounds: Valid input range; None for unbounded inputs.
        generator: Random generator of the start.

    Returns:
        Detached adversarial inputs (B, ...), within ``eps`` of x and inside ``bounds``.
    """
    check_norm(norm)
    if steps < 0:
        raise ConfigError(f"steps={steps}: a PGD attack needs steps >= 0")
    x = x.detach()
    if eps <= 0:
        return x.clone()
    alpha = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    x_adv = x.clone()
    if random_start:
        x_adv = clamp_to_bounds(x + random_in_ball(x, eps, norm, generator), bounds)
    for _ in range(steps):
        _, grad = input_gradient(objective, x_adv)
        x_adv = x_adv + alpha * _steepest_ascent(grad, norm)
        x_adv = clamp_to_bounds(project(x_adv, x, eps, norm), bounds)
    return x_adv.detach()
