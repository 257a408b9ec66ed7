"""Robustness curves: a model's objective on clean inputs, PGD examples and random noise, per radius.

``robustness_curve`` measures, for each attack radius eps, the objective of ``objectives.py`` (and a
classifier's accuracy, an autoencoder's distance to the target) on clean inputs, on PGD examples (Madry
et al. 2018, ``attacks.pgd``) and on random noise of norm exactly eps: an attack that does no better than
the noise finds no adversarial direction. ``example_rows`` attacks a few images to look at (Kos et al.
2017's figures for autoencoders). ``reports.py`` writes and logs the results.

Images are float in [-1, 1] (docs/architecture.md, "Batches"). Shape legend: B batch, C/H/W image,
N images shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

from lit_genai import paradigm
from lit_genai.adversarial.attacks import Norm, check_norm, clamp_to_bounds, pgd, random_on_sphere
from lit_genai.adversarial.objectives import (
    ObjectiveName,
    build_objective,
    check_objective,
    is_classifier,
    model_labels,
    targets,
)
from lit_genai.errors import ConfigError

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
    check_norm(norm)
    check_objective(module, objective)
    if any(eps < 0 for eps in eps_list):
        raise ConfigError(f"eps={list(eps_list)}: attack radii must be >= 0")
    batches = list(batches) if not hasattr(batches, "__len__") else batches
    classifier = is_classifier(module)
    rows = []
    with paradigm.eval_mode(module):
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
        "noise": clamp_to_bounds(x + random_on_sphere(x, eps, norm, generator), bounds) if eps > 0 else x,
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
    with paradigm.eval_mode(module), _seeded(seed, module) as generator:
        x_adv = pgd(
            fn, x, eps, norm=norm, steps=steps, step_size=step_size, bounds=bounds, generator=generator
        )
        rows["adversarial"] = x_adv
        if paradigm.is_autoencoder(module):
            labels = model_labels(module, y)
            with torch.no_grad():
                rows["reconstruction of clean"] = module.reconstruct(x, labels).clamp(-1, 1)
                rows["reconstruction of adversarial"] = module.reconstruct(x_adv, labels).clamp(-1, 1)
        if objective in ("latent", "target_reconstruction"):
            rows["target"] = targets(x, y)[0]
    return rows
