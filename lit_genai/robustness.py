"""Adversarial examples for generative models and classifiers: FGSM, PGD, objectives, robustness curves.

- **Attacks.** ``fgsm`` (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples")
  and ``pgd`` (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks")
  maximise a per-example objective inside the L-inf or L2 ball of radius ``eps`` around each input,
  and inside the data's ``bounds``. Gradients are taken w.r.t. the input only
  (``torch.autograd.grad``), so the parameters' ``.grad`` are untouched, and under
  ``torch.enable_grad()``, so attacks also run inside ``no_grad`` validation. The networks' modes
  (train / eval) are left as the caller set them.
- **Objectives** (``Objective``: x (B, ...) -> (B,) values to maximise) read only the module contract
  of docs/architecture.md ("Autoencoders"): ``per_example_loss`` (the model's own objective: a
  VAE's negative ELBO, a classifier's cross-entropy), ``reconstruct`` and ``encode``. The targeted
  attacks are those of Kos et al. 2017, "Adversarial examples for generative models": move the
  latent code (``latent``) or the reconstruction (``target_reconstruction``) of x_adv towards those
  of a target image (another example of the batch), within the eps-ball instead of Kos et al.'s
  penalty on ||x_adv - x||.
- **Curves.** ``robustness_curve`` measures, per radius, the objective (and a classifier's accuracy,
  an autoencoder's distance to the target) on clean inputs, PGD examples and random noise of the same
  norm; ``write_curve`` writes ``robustness.json`` + ``robustness.png``, ``log_curve`` sends them to
  the loggers. ``RobustnessTrainer.robustness`` is the ``lit-genai robustness`` subcommand.

Images are float in [-1, 1] (docs/architecture.md, "Batches"): an MNIST eps of 0.3 in [0, 1] units is
0.6 here. Shape legend: B batch, C channels, H/W spatial, D = C·H·W.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_genai.errors import ConfigError, LitGenAIError
from lit_genai.paradigm import eval_mode

Objective = Callable[[Tensor], Tensor]  # x (B, ...) -> (B,) per-example value to MAXIMISE
Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")

_TINY = 1e-12  # guards the division by a zero gradient / perturbation norm


# ---------------------------------------------------------------------- geometry of the eps-balls


def _check_norm(norm: str) -> None:
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


def _clamp(x: Tensor, bounds: Optional[tuple[float, float]]) -> Tensor:
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
    _check_norm(norm)
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
    _check_norm(norm)
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
    _check_norm(norm)
    x = x.detach()
    if eps <= 0:
        return x.clone()
    _, grad = input_gradient(objective, x)
    return _clamp(x + eps * _steepest_ascent(grad, norm), bounds).detach()


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
    _check_norm(norm)
    if steps < 0:
        raise ConfigError(f"steps={steps}: a PGD attack needs steps >= 0")
    x = x.detach()
    if eps <= 0:
        return x.clone()
    alpha = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    x_adv = x.clone()
    if random_start:
        x_adv = _clamp(x + random_in_ball(x, eps, norm, generator), bounds)
    for _ in range(steps):
        _, grad = input_gradient(objective, x_adv)
        x_adv = x_adv + alpha * _steepest_ascent(grad, norm)
        x_adv = _clamp(project(x_adv, x, eps, norm), bounds)
    return x_adv.detach()


# ---------------------------------------------------------------------- objectives (the module contract)

OBJECTIVES = ("loss", "reconstruction", "latent", "target_reconstruction")
ObjectiveName = Literal["loss", "reconstruction", "latent", "target_reconstruction"]
_NEEDS = {  # the contract method each objective calls (docs/architecture.md, "Autoencoders")
    "loss": "per_example_loss",
    "reconstruction": "reconstruct",
    "latent": "encode",
    "target_reconstruction": "reconstruct",
}


def supported_objectives(module: Any) -> list[str]:
    """The objectives whose contract method ``module`` has (``latent`` also needs continuous latents)."""
    names = [name for name in OBJECTIVES if callable(getattr(module, _NEEDS[name], None))]
    if getattr(module, "latent_space", "continuous") == "discrete":
        names = [name for name in names if name != "latent"]
    return names


def check_objective(module: Any, objective: str) -> None:
    """Raise a one-line ``ConfigError`` when ``module`` lacks what ``objective`` needs."""
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"objective={objective!r} is not one of {OBJECTIVES}: set --objective to one of them"
        )
    kind = type(module).__name__
    others = ", ".join(supported_objectives(module)) or "none: it has no per_example_loss/reconstruct/encode"
    method = _NEEDS[objective]
    if not callable(getattr(module, method, None)):
        raise ConfigError(
            f"objective {objective!r} needs {kind}.{method}(), which {kind} does not have: "
            f"set --objective to one it supports ({others})"
        )
    if objective == "latent" and getattr(module, "latent_space", "continuous") == "discrete":
        raise ConfigError(
            f"objective 'latent' needs a continuous latent space but {kind}.latent_space is 'discrete' "
            f"(token ids have no gradient): set --objective to one it supports ({others})"
        )


def _labels(module: Any, y: Optional[Tensor]) -> Optional[Tensor]:
    """The labels a module uses: y for class-conditional models and classifiers (num_classes > 0)."""
    return y if y is not None and (getattr(module, "num_classes", 0) or 0) > 0 else None


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """(B, ...) x (B, ...) -> (B,) squared Euclidean distance of each pair of examples."""
    return (a - b).flatten(1).pow(2).sum(1)


def loss_objective(module: Any, y: Optional[Tensor] = None) -> Objective:
    """The model's own per-example objective, ``per_example_loss(x, y)`` (a VAE's negative ELBO, a
    likelihood model's NLL, a classifier's cross-entropy): an untargeted attack raises it."""
    check_objective(module, "loss")
    y = _labels(module, y)
    return lambda x: module.per_example_loss(x, y)


def reconstruction_objective(module: Any, x_clean: Tensor, y: Optional[Tensor] = None) -> Objective:
    """Untargeted attack on an autoencoder: the mean squared error (over the D pixels) between
    ``reconstruct(x_adv)`` and the clean input, so x_adv reconstructs to something else."""
    check_objective(module, "reconstruction")
    y, x_clean = _labels(module, y), x_clean.detach()
    return lambda x: _sq_dist(module.reconstruct(x, y), x_clean) / x_clean[0].numel()


def latent_objective(
    module: Any,
    x_target: Tensor,
    y: Optional[Tensor] = None,
    y_target: Optional[Tensor] = None,
) -> Objective:
    """Kos et al. 2017, latent attack: -||encode(x_adv) - encode(x_target)||^2, so that x_adv (close to
    the clean image) is encoded like the target image. The target codes are computed once, without
    gradient."""
    check_objective(module, "latent")
    y, y_target = _labels(module, y), _labels(module, y_target)
    with torch.no_grad():
        z_target = module.encode(x_target, y_target).detach()  # (B, D) or (B, c, h, w)
    return lambda x: -_sq_dist(module.encode(x, y), z_target)


def target_reconstruction_objective(module: Any, x_target: Tensor, y: Optional[Tensor] = None) -> Objective:
    """Kos et al. 2017, output attack: -MSE(reconstruct(x_adv), x_target), so that x_adv reconstructs
    to the target image."""
    check_objective(module, "target_reconstruction")
    y, x_target = _labels(module, y), x_target.detach()
    return lambda x: -_sq_dist(module.reconstruct(x, y), x_target) / x_target[0].numel()


def targets(x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    """The target of each example for the targeted attacks: the batch rolled by one (example i aims at
    example i - 1, of another image; with a batch of one the target is the image itself)."""
    return x.roll(1, 0), (None if y is None else y.roll(1, 0))


def build_objective(
    module: Any, name: str, x: Tensor, y: Optional[Tensor] = None
) -> tuple[Objective, Optional[Callable[[Tensor], Tensor]]]:
    """The objective ``name`` for the batch (x, y) and its distance to the target, (B,) per example:
    None for ``loss``; ||reconstruct(x') - x|| for ``reconstruction``; ||encode(x') - encode(x_t)||
    for ``latent``; ||reconstruct(x') - x_t|| for ``target_reconstruction``."""
    check_objective(module, name)
    if name == "loss":
        return loss_objective(module, y), None
    labels = _labels(module, y)
    if name == "reconstruction":
        objective = reconstruction_objective(module, x, y)
        return objective, lambda v: _sq_dist(module.reconstruct(v, labels), x).sqrt()
    x_target, y_target = targets(x, y)
    if name == "latent":
        objective = latent_objective(module, x_target, y, y_target)
        return objective, lambda v: (-objective(v)).clamp_min(0).sqrt()
    objective = target_reconstruction_objective(module, x_target, y)
    return objective, lambda v: _sq_dist(module.reconstruct(v, labels), x_target).sqrt()


def is_classifier(module: Any) -> bool:
    """A module whose ``forward`` gives (B, K) logits: ``num_classes`` > 0, a ``per_example_loss``, and
    neither ``sample`` nor ``reconstruct`` (generative models and autoencoders have one of them)."""
    return (
        (getattr(module, "num_classes", 0) or 0) > 0
        and callable(getattr(module, "per_example_loss", None))
        and not hasattr(module, "sample")
        and not hasattr(module, "reconstruct")
    )


# ---------------------------------------------------------------------- robustness curves

KINDS = ("clean", "pgd", "noise")  # clean inputs, PGD examples, random noise of the same norm


def robustness_curve(
    module: Any,
    batches: Iterable[Any],
    eps_list: Sequence[float],
    *,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: Optional[float] = None,
    objective: ObjectiveName = "loss",
    seed: int = 0,
    bounds: Optional[tuple[float, float]] = (-1.0, 1.0),
) -> list[dict[str, Any]]:
    """The objective (and accuracy, distance to target) on clean inputs, PGD examples and random noise,
    for each attack radius.

    The module is put in eval mode for the measurement (restored afterwards). Random noise has norm
    exactly eps (``random_on_sphere``): a PGD attack that does no better than it finds no adversarial
    direction. Each radius starts from ``seed`` (the PGD start and the noise come from a generator
    seeded with it, the global RNG too, e.g. for a VAE's reparameterisation noise, then restored), so
    a row does not depend on the other radii.

    Args:
        module: A module keeping the contract of docs/architecture.md ("Autoencoders"); see
            ``build_objective`` for what each objective needs.
        batches: (x, y) batches, x (B, C, H, W) float in ``bounds`` on the module's device, or plain x.
            Iterated once per radius, so a list (or a DataLoader), not a generator.
        eps_list: Attack radii, in the units of x.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps.
        step_size: PGD step length; None = 2.5·eps/steps for each eps.
        objective: One of ``OBJECTIVES``; the attack maximises it.
        seed: Seed of the random starts and noise.
        bounds: Valid input range.

    Returns:
        One dict per radius: ``eps``, the settings (``norm``, ``steps``, ``step_size``, ``objective``),
        ``num_examples``, and for each kind in ``KINDS`` the mean ``objective_<kind>``, for classifiers
        the ``accuracy_<kind>``, and for the reconstruction / latent objectives the mean L2
        ``distance_<kind>`` to the target (the clean image for ``reconstruction``).
    """
    _check_norm(norm)
    check_objective(module, objective)
    if any(eps < 0 for eps in eps_list):
        raise ConfigError(f"eps={list(eps_list)}: attack radii must be >= 0")
    batches = list(batches) if not hasattr(batches, "__len__") else batches
    classifier = is_classifier(module)
    rows = []
    with eval_mode(module):
        for eps in eps_list:
            sums: dict[str, float] = {}
            count = 0
            with _seeded(seed, module) as generator:
                for batch in batches:
                    x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
                    if not torch.is_floating_point(x):
                        raise ConfigError(
                            f"robustness attacks continuous inputs; the data gives {x.dtype} batches "
                            "(tokens): use image data"
                        )
                    values = _measure(
                        module,
                        objective,
                        x,
                        y,
                        float(eps),
                        norm,
                        steps,
                        step_size,
                        bounds,
                        generator,
                        classifier,
                    )
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += x.shape[0]
            row: dict[str, Any] = {
                "eps": float(eps),
                "norm": norm,
                "steps": steps,
                "step_size": step_size,
                "objective": objective,
                "num_examples": count,
            }
            row.update({key: total / max(count, 1) for key, total in sums.items()})
            rows.append(row)
    return rows


@contextmanager
def _seeded(seed: int, module: Any) -> Iterator[torch.Generator]:
    """A CPU generator seeded with ``seed``, and the global RNGs seeded alike, restored on exit."""
    devices = [d.index or 0 for d in {p.device for p in module.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _measure(
    module: Any,
    objective: str,
    x: Tensor,
    y: Optional[Tensor],
    eps: float,
    norm: str,
    steps: int,
    step_size: Optional[float],
    bounds: Optional[tuple[float, float]],
    generator: torch.Generator,
    classifier: bool,
) -> dict[str, float]:
    """Sums over the batch of each ``<metric>_<kind>`` (objective, accuracy, distance)."""
    fn, distance = build_objective(module, objective, x, y)
    inputs = {
        "clean": x,
        "pgd": pgd(
            fn, x, eps, norm=norm, steps=steps, step_size=step_size, bounds=bounds, generator=generator
        ),
        "noise": _clamp(x + random_on_sphere(x, eps, norm, generator), bounds) if eps > 0 else x,
    }
    sums = {}
    with torch.no_grad():
        for kind, x_in in inputs.items():
            sums[f"objective_{kind}"] = fn(x_in).sum().item()
            if classifier and y is not None:
                sums[f"accuracy_{kind}"] = (module(x_in).argmax(-1) == y).sum().item()
            if distance is not None:
                sums[f"distance_{kind}"] = distance(x_in).sum().item()
    return sums


def example_rows(
    module: Any,
    x: Tensor,
    y: Optional[Tensor],
    eps: float,
    *,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: Optional[float] = None,
    objective: ObjectiveName = "loss",
    seed: int = 0,
    bounds: Optional[tuple[float, float]] = (-1.0, 1.0),
) -> dict[str, Tensor]:
    """The attack on a few images, to look at: ``{row name: (N, C, H, W) images in [-1, 1]}``.

    Rows: ``clean`` x, ``adversarial`` x' (PGD at ``eps``), and for autoencoders their reconstructions
    ``reconstruction of clean`` / ``reconstruction of adversarial``; for the targeted objectives also
    the ``target`` images (Kos et al. 2017's figures: a digit whose reconstruction becomes another).
    """
    fn, _ = build_objective(module, objective, x, y)
    rows = {"clean": x}
    with eval_mode(module), _seeded(seed, module) as generator:
        x_adv = pgd(
            fn, x, eps, norm=norm, steps=steps, step_size=step_size, bounds=bounds, generator=generator
        )
        rows["adversarial"] = x_adv
        if callable(getattr(module, "reconstruct", None)):
            labels = _labels(module, y)
            with torch.no_grad():
                rows["reconstruction of clean"] = module.reconstruct(x, labels).clamp(-1, 1)
                rows["reconstruction of adversarial"] = module.reconstruct(x_adv, labels).clamp(-1, 1)
        if objective in ("latent", "target_reconstruction"):
            rows["target"] = targets(x, y)[0]
    return rows


def write_examples(rows: dict[str, Tensor], path: Union[str, Path]) -> Path:
    """``example_rows`` as one PNG grid, a row per entry (top to bottom in the dict's order)."""
    from lit_genai.callbacks.media import write_image_grid
    from lit_genai.media import to_uint8

    images = torch.cat([to_uint8(v.detach().cpu()) for v in rows.values()])  # (rows * N, C, H, W)
    return write_image_grid(Path(path), images, nrow=next(iter(rows.values())).shape[0])


METRICS = {  # row key prefix -> axis label
    "objective": "objective",
    "accuracy": "accuracy",
    "distance": "L2 distance to target",
}


def curve_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics (``objective``, ``accuracy``, ``distance``) the rows hold."""
    return [m for m in METRICS if rows and f"{m}_clean" in rows[0]]


def write_curve(rows: Sequence[dict[str, Any]], out_dir: Union[str, Path], title: str) -> tuple[Path, Path]:
    """Write ``robustness.json`` (``{"title", "rows"}``) and ``robustness.png`` (one panel per metric
    against eps: PGD and noise lines, the clean value dotted) into ``out_dir``; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "robustness.json", out / "robustness.png"
    json_path.write_text(json.dumps({"title": title, "rows": list(rows)}, indent=2) + "\n")

    metrics = curve_metrics(rows)
    figure = Figure(figsize=(4.2 * max(len(metrics), 1), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    eps = [row["eps"] for row in rows]
    objective = rows[0]["objective"] if rows else ""
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        axes.plot(eps, [r[f"{metric}_pgd"] for r in rows], "o-", color="tab:red", label="PGD")
        axes.plot(eps, [r[f"{metric}_noise"] for r in rows], "s--", color="tab:blue", label="random noise")
        axes.plot(eps, [r[f"{metric}_clean"] for r in rows], ":", color="grey", label="clean")
        label = f"objective ({objective})" if metric == "objective" else METRICS[metric]
        axes.set_xlabel(f"eps ({rows[0]['norm']})")
        axes.set_ylabel(label)
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(png_path)
    return json_path, png_path


def write_comparison(
    curves: dict[str, Sequence[dict[str, Any]]], png_path: Union[str, Path], title: str = ""
) -> Path:
    """One panel per metric with the PGD line of each curve (``{label: rows}``, e.g. a normally and
    an adversarially trained model) and its noise line dashed: the effect of adversarial training
    in one picture. Returns ``png_path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if all(rows and f"{m}_clean" in rows[0] for rows in curves.values())]
    if not curves or not metrics:
        raise ConfigError("write_comparison: give curves that share a metric (objective, accuracy, distance)")
    figure = Figure(figsize=(4.2 * len(metrics), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        for (label, rows), colour in zip(curves.items(), colours * len(curves), strict=False):
            eps = [r["eps"] for r in rows]
            axes.plot(eps, [r[f"{metric}_pgd"] for r in rows], "o-", color=colour, label=f"{label}: PGD")
            axes.plot(
                eps,
                [r[f"{metric}_noise"] for r in rows],
                "s--",
                color=colour,
                alpha=0.5,
                label=f"{label}: noise",
            )
        first = next(iter(curves.values()))
        axes.set_xlabel(f"eps ({first[0]['norm']})")
        axes.set_ylabel(f"objective ({first[0]['objective']})" if metric == "objective" else METRICS[metric])
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path)
    return png_path


def main(args: Optional[Sequence[str]] = None) -> None:
    """``python -m lit_genai.robustness compare OUT.png LABEL=robustness.json ...``: one picture of
    several curves written by ``lit-genai robustness``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lit_genai.robustness")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="plot several robustness.json curves together")
    compare.add_argument("out", help="the PNG to write")
    compare.add_argument("curves", nargs="+", metavar="LABEL=JSON", help="a label and a robustness.json")
    compare.add_argument("--title", default="")
    parsed = parser.parse_args(args)
    curves = {}
    for item in parsed.curves:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{item!r}: give LABEL=PATH with an existing robustness.json")
        curves[label] = json.loads(Path(path).read_text())["rows"]
    try:
        print(f"wrote {write_comparison(curves, parsed.out, parsed.title)}")
    except LitGenAIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")


def curve_scalars(rows: Sequence[dict[str, Any]], prefix: str = "robustness") -> dict[str, float]:
    """The rows as flat scalars ``<prefix>/<metric>_<kind>@eps=<eps>`` (any logger can take them)."""
    return {
        f"{prefix}/{key}@eps={row['eps']:g}": float(value)
        for row in rows
        for key, value in row.items()
        if key.split("_")[0] in METRICS and isinstance(value, (int, float))
    }


def log_curve(
    trainer: Any, rows: Sequence[dict[str, Any]], png_path: Union[str, Path], key: str = "robustness"
) -> None:
    """Send the curve to the trainer's loggers: scalars ``<key>/<metric>_<kind>@eps=<eps>`` to all of
    them, the PNG as an image (W&B, TensorBoard: ``callbacks.media.log_images``) and the rows as a
    W&B table ``<key>/table``."""
    from lightning.pytorch.loggers import WandbLogger
    from PIL import Image

    from lit_genai.callbacks.media import log_images

    if not trainer.loggers:
        return
    step = trainer.global_step
    scalars = curve_scalars(rows, key)
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)
        if isinstance(logger, WandbLogger) and rows:
            columns = list(rows[0])
            logger.log_table(
                key=f"{key}/table",
                columns=columns,
                data=[[r.get(c) for c in columns] for r in rows],
                step=step,
            )
    with Image.open(png_path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    log_images(trainer, f"{key}/curve", pixels[None], caption=Path(png_path).parent.name)
    for logger in trainer.loggers:
        logger.save()


# ---------------------------------------------------------------------- the `lit-genai robustness` subcommand


class RobustnessTrainer(Trainer):
    """Lightning's ``Trainer`` with one more method, ``robustness``, which ``LightningCLI`` turns into
    the ``lit-genai robustness`` subcommand (its typed arguments become the command-line options).
    ``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own."""

    def robustness(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        eps: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3),
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Optional[float] = None,
        objective: ObjectiveName = "loss",
        num_examples: int = 500,
        seed: int = 0,
        output_dir: Optional[str] = None,
        examples_shown: int = 8,
        weights_only: Optional[bool] = None,
    ) -> list[dict[str, Any]]:
        """Attack a trained model with PGD on test examples; write and log its robustness curve.

        Loads ``ckpt_path`` (with the EMA average when the checkpoint holds one and the EMA callback
        is not disabled), attacks the first ``num_examples`` examples of the data's test set (passed
        through the module's ``prepare_inputs(x, generator)`` when it has one) for each
        radius (``robustness_curve``), writes ``robustness.json`` and ``robustness.png`` to
        ``output_dir`` with ``examples.png`` (``example_rows``), and sends them to the loggers
        (``log_curve``). Runs in this process on the trainer's first device, in float32.

        Args:
            model: The module to attack (its hyperparameters come from the checkpoint).
            datamodule: Gives the examples: ``setup("test")`` then ``test_dataloader()``.
            ckpt_path: Checkpoint to load (``last``: the run's last.ckpt). The command line requires one;
                from Python, None attacks the module as it is.
            eps: Attack radii, in the units of the data ([-1, 1] images: MNIST's 0.3 in [0, 1] is 0.6).
            norm: Ball of the attack: ``linf`` or ``l2``.
            steps: PGD steps.
            step_size: PGD step length; default 2.5 * eps / steps for each eps (Madry et al. 2018).
            objective: What the attack maximises: ``loss`` (the model's own per-example objective,
                e.g. a VAE's negative ELBO, a classifier's cross-entropy), ``reconstruction`` (MSE of
                the reconstruction to the clean input), ``latent`` / ``target_reconstruction`` (Kos et
                al. 2017: move the code / the reconstruction towards another test image's).
            num_examples: Test examples attacked (the first ones of the test loader).
            seed: Seed of the PGD random starts and of the random-noise baseline.
            output_dir: Folder of the outputs. Default: ``robustness/`` next to the checkpoint's
                ``checkpoints/`` folder (the run folder), or in the run folder without a checkpoint.
            examples_shown: Images of the first batch drawn attacked at the largest radius, in
                ``examples.png`` (rows: clean, adversarial and, for autoencoders, both reconstructions
                and the target) and in the loggers.
            weights_only: Load the checkpoint with ``torch.load(weights_only=...)``; the command line
                makes it True unless ``--weights_only false``.

        Returns:
            The curve's rows (see ``robustness_curve``).
        """
        check_objective(model, objective)
        _check_norm(norm)
        if datamodule is None:
            raise ConfigError("robustness needs data for its test examples: set --data")
        if num_examples < 1:
            raise ConfigError(f"num_examples={num_examples}: attack at least one example")
        if ckpt_path is not None:
            load_for_evaluation(model, ckpt_path, self, weights_only=weights_only is not False)
        device = self.strategy.root_device
        model.to(device)
        batches = attack_examples(datamodule, num_examples, device, self)
        prepare = getattr(model, "prepare_inputs", None)
        if callable(prepare):  # e.g. a Bernoulli VAE's binarisation: attack what the model is trained on
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                batches = [(prepare(x, generator), y) for x, y in batches]
        rows = robustness_curve(
            model,
            batches,
            list(eps),
            norm=norm,
            steps=steps,
            step_size=step_size,
            objective=objective,
            seed=seed,
        )
        if output_dir is not None:
            out = Path(output_dir)
        elif ckpt_path is not None:
            out = Path(ckpt_path).resolve().parent.parent / "robustness"
        else:
            out = Path(self.default_root_dir) / "robustness"
        n = rows[0]["num_examples"] if rows else 0
        title = f"{type(model).__name__}: PGD-{steps} ({norm}) on {objective}, {n} test examples"
        _, png_path = write_curve(rows, out, title)
        log_curve(self, rows, png_path)
        x, y = batches[0]
        if x.ndim == 4 and max(eps) > 0:  # images: show the attack at the largest radius
            shown = example_rows(
                model,
                x[:examples_shown],
                None if y is None else y[:examples_shown],
                max(eps),
                norm=norm,
                steps=steps,
                step_size=step_size,
                objective=objective,
                seed=seed,
            )
            from PIL import Image

            from lit_genai.callbacks.media import log_images  # not at the top: media -> metrics -> here

            examples = write_examples(shown, out / "examples.png")
            with Image.open(examples) as image:
                grid = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W)
            caption = f"{', '.join(shown)} (eps {max(eps):g})"
            log_images(self, "robustness/examples", grid[None], caption=caption)
            rank_zero_info(f"Wrote {png_path}, {examples} and robustness.json to {out}")
        for logger in self.loggers:
            logger.finalize("success")
        return rows


def load_for_evaluation(
    model: LightningModule, ckpt_path: str, trainer: Optional[Trainer] = None, *, weights_only: bool = True
) -> bool:
    """Load a ``lit-genai fit`` checkpoint into ``model`` as ``test`` would see it: the module's weights,
    then the EMA average (``callbacks/ema.py`` stores it as ``callbacks["EMA"]["shadow"]``, keyed like
    the target submodule's state dict) unless the trainer's EMA callback is disabled. Returns whether
    the EMA average was loaded."""
    from lit_genai.callbacks.ema import EMA

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


def attack_examples(
    datamodule: LightningDataModule,
    num_examples: int,
    device: torch.device,
    trainer: Optional[Trainer] = None,
) -> list[tuple[Tensor, Optional[Tensor]]]:
    """The first ``num_examples`` (x, y) of the data's test loader, on ``device`` (the last batch cut)."""
    if trainer is not None:
        datamodule.trainer = trainer
    datamodule.prepare_data()
    datamodule.setup("test")
    batches, count = [], 0
    for batch in datamodule.test_dataloader():
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        keep = min(num_examples - count, x.shape[0])
        batches.append((x[:keep].to(device), None if y is None else y[:keep].to(device)))
        count += keep
        if count >= num_examples:
            break
    if not batches:
        raise ConfigError(
            f"the test set of {type(datamodule).__name__} is empty: robustness has nothing to attack"
        )
    return batches


if __name__ == "__main__":
    main()
