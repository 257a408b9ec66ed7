"""What an adversarial attack maximises: objectives read through the module contract.

An ``Objective`` (``attacks.py``) maps x (B, ...) to (B,) values to maximise. The objectives here read
only the contracts of docs/architecture.md:

- ``loss``: the model's own ``per_example_loss(x, y)`` (a VAE's negative ELBO, a classifier's
  cross-entropy); any module with that method (``PerExampleLoss``), autoencoder or classifier;
- ``reconstruction``, ``latent``, ``target_reconstruction``: an autoencoder, read only through the
  ``lit_genai.paradigm.Autoencoder`` protocol (``encode``, ``reconstruct``, ``latent_space``).

The targeted attacks are those of Kos et al. 2017, "Adversarial examples for generative models": move
the latent code (``latent``) or the reconstruction (``target_reconstruction``) of x_adv towards those of
a target image (another example of the batch, ``targets``), within the eps-ball instead of Kos et al.'s
penalty on ||x_adv - x||.

Shape legend: B batch, C/H/W image, D latent size (a latent may also be (B, c, h, w)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from lit_genai import paradigm
from lit_genai.adversarial.attacks import Objective
from lit_genai.errors import ConfigError

OBJECTIVES = ("loss", "reconstruction", "latent", "target_reconstruction")
ObjectiveName = Literal["loss", "reconstruction", "latent", "target_reconstruction"]
_NEEDS = {  # the contract method each objective calls (docs/architecture.md, "Autoencoders")
    "loss": "per_example_loss",
    "reconstruction": "reconstruct",
    "latent": "encode",
    "target_reconstruction": "reconstruct",
}
# What the Autoencoder protocol asks for, to name what a module lacks in an error.
_AUTOENCODER_MEMBERS = ("encode", "decode", "reconstruct", "per_example_loss", "latent_space", "latent_shape")


@runtime_checkable
class PerExampleLoss(Protocol):
    """A module with its own per-example objective (an ``Autoencoder``, a likelihood model, the
    ``Classifier`` of ``metrics/classifier/``): x (B, ...), y (B,) or None -> (B,), differentiable in x."""

    def per_example_loss(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor: ...


def _supports(module: Any, objective: str) -> bool:
    if objective == "loss":
        return isinstance(module, PerExampleLoss)
    if not paradigm.is_autoencoder(module):
        return False
    # Token ids (a VQ-VAE's codes) have no gradient to move towards a target code.
    return objective != "latent" or module.latent_space == "continuous"


def supported_objectives(module: Any) -> list[str]:
    """The objectives ``module`` keeps the contract of: ``loss`` needs ``per_example_loss``, the others
    an ``Autoencoder`` (``latent`` with continuous latents)."""
    return [name for name in OBJECTIVES if _supports(module, name)]


def check_objective(module: Any, objective: str) -> None:
    """Raise a one-line ``ConfigError`` when ``module`` lacks what ``objective`` needs."""
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"objective={objective!r} is not one of {OBJECTIVES}: set --objective to one of them"
        )
    if _supports(module, objective):
        return
    kind = type(module).__name__
    others = ", ".join(supported_objectives(module)) or "none: it has no per_example_loss/reconstruct/encode"
    advice = f"set --objective to one it supports ({others})"
    method = _NEEDS[objective]
    if not callable(getattr(module, method, None)):
        raise ConfigError(
            f"objective {objective!r} needs {kind}.{method}(), which {kind} does not have: {advice}"
        )
    missing = [name for name in _AUTOENCODER_MEMBERS if not hasattr(module, name)]
    if missing:
        raise ConfigError(
            f"objective {objective!r} needs an autoencoder (lit_genai.paradigm.Autoencoder) and {kind} "
            f"lacks {', '.join(missing)}: {advice}"
        )
    if module.latent_space == "discrete":
        raise ConfigError(
            f"objective 'latent' needs a continuous latent space but {kind}.latent_space is 'discrete' "
            f"(token ids have no gradient): {advice}"
        )
    raise ConfigError(
        f"objective {objective!r} needs an autoencoder but {kind}.latent_space is {module.latent_space!r}, "
        f"not 'continuous' or 'discrete': {advice}"
    )


def model_labels(module: Any, y: Optional[Tensor]) -> Optional[Tensor]:
    """The labels a module uses: y for class-conditional models and classifiers (``num_classes`` > 0 in
    the module contract), else None."""
    return y if y is not None and (getattr(module, "num_classes", 0) or 0) > 0 else None


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """(B, ...) x (B, ...) -> (B,) squared Euclidean distance of each pair of examples."""
    return (a - b).flatten(1).pow(2).sum(1)


def loss_objective(module: PerExampleLoss, y: Optional[Tensor] = None) -> Objective:
    """The model's own per-example objective, ``per_example_loss(x, y)`` (a VAE's negative ELBO, a
    likelihood model's NLL, a classifier's cross-entropy): an untargeted attack raises it."""
    check_objective(module, "loss")
    y = model_labels(module, y)
    return lambda x: module.per_example_loss(x, y)


def reconstruction_objective(
    module: paradigm.Autoencoder, x_clean: Tensor, y: Optional[Tensor] = None
) -> Objective:
    """Untargeted attack on an autoencoder: the mean squared error (over the pixels) between
    ``reconstruct(x_adv)`` and the clean input, so x_adv reconstructs to something else."""
    check_objective(module, "reconstruction")
    y, x_clean = model_labels(module, y), x_clean.detach()
    return lambda x: _sq_dist(module.reconstruct(x, y), x_clean) / x_clean[0].numel()


def latent_objective(
    module: paradigm.Autoencoder,
    x_target: Tensor,
    y: Optional[Tensor] = None,
    y_target: Optional[Tensor] = None,
) -> Objective:
    """Kos et al. 2017, latent attack: -||encode(x_adv) - encode(x_target)||^2, so that x_adv (close to
    the clean image) is encoded like the target image. The target codes are computed once, without
    gradient."""
    check_objective(module, "latent")
    y, y_target = model_labels(module, y), model_labels(module, y_target)
    with torch.no_grad():
        z_target = module.encode(x_target, y_target).detach()  # (B, D) or (B, c, h, w)
    return lambda x: -_sq_dist(module.encode(x, y), z_target)


def target_reconstruction_objective(
    module: paradigm.Autoencoder, x_target: Tensor, y: Optional[Tensor] = None
) -> Objective:
    """Kos et al. 2017, output attack: -MSE(reconstruct(x_adv), x_target), so that x_adv reconstructs
    to the target image."""
    check_objective(module, "target_reconstruction")
    y, x_target = model_labels(module, y), x_target.detach()
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
    labels = model_labels(module, y)
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
    neither a generative module (``sample``) nor an autoencoder (``paradigm``'s two contracts)."""
    return (
        (getattr(module, "num_classes", 0) or 0) > 0
        and isinstance(module, PerExampleLoss)
        and not paradigm.is_generative(module)
        and not paradigm.is_autoencoder(module)
    )
