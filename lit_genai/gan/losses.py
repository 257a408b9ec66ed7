"""Adversarial losses and gradient penalties of GANs, as pure functions of critic outputs.

Implements:
    - Goodfellow et al. 2014, "Generative Adversarial Nets": the discriminator's cross-entropy and the
      "non-saturating" generator loss -log D(G(z)) (sec. 3), written with logits:
      -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l).
    - Lim & Ye 2017, "Geometric GAN", as used by Miyato et al. 2018, "Spectral Normalization for
      Generative Adversarial Networks" (eq. 16-17): the hinge loss.
    - Arjovsky et al. 2017, "Wasserstein GAN": the critic's estimate of the Wasserstein-1 distance.
    - Gulrajani et al. 2017, "Improved Training of Wasserstein GANs" (WGAN-GP), Algorithm 1: the
      two-sided gradient penalty (||grad D(x_hat)||_2 - 1)^2 at random interpolates x_hat.
    - Mescheder, Geiger & Nowozin 2018, "Which Training Methods for GANs do actually Converge?"
      (eq. 9): the R1 penalty ||grad D(x)||^2 on real data.

Every function returns per-example (B,) terms in at least float32; the LightningModule takes the
mean, weights the penalties (lambda = 10 for WGAN-GP; gamma / 2 for R1) and logs each term.

Mixed precision: under ``16-mixed`` the gradients inside a penalty are taken of the critic output
times the AMP loss scale ``scale`` (so small float16 gradients do not underflow) and divided by it
afterwards, before the norm (the "gradient penalty" recipe of the PyTorch AMP examples). The
returned penalty is unscaled: the caller adds it to the loss and backpropagates as usual.

Shapes:
    B batch size; x is any (B, ...) tensor the critic accepts, e.g. (B, C, H, W) images.
    Logits are (B,) (a (B, 1) critic output is flattened).
"""

from collections.abc import Callable
from typing import Literal, Optional, Union, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_genai.errors import ConfigError

Loss = Literal["non_saturating", "hinge", "wasserstein"]
LOSSES: tuple[str, ...] = get_args(Loss)


def check_loss(kind: str) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) unless ``kind`` is one of ``LOSSES``."""
    if kind not in LOSSES:
        raise ConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


def _logits(logits: Tensor, name: str) -> Tensor:
    """Flatten a (B,) or (B, 1) critic output to (B,) in at least float32."""
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]  # (B,)
    if logits.dim() != 1:
        raise ValueError(f"{name} must be (B,) logits (one per example), got shape {tuple(logits.shape)}")
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def discriminator_loss(kind: Loss, real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """Per-example loss of the discriminator (critic) on paired real and generated examples.

    Args:
        kind: "non_saturating" (Goodfellow et al. 2014), "hinge" (Lim & Ye 2017; Miyato et al.
            2018) or "wasserstein" (Arjovsky et al. 2017; add ``gradient_penalty`` for WGAN-GP).
        real_logits: (B,) critic outputs D(x) on real data.
        fake_logits: (B,) critic outputs D(G(z)) on generated data.

    Returns:
        {"loss": (B,), "real": (B,), "fake": (B,)} with loss = real + fake; the caller minimises
        ``loss.mean()``.
    """
    check_loss(kind)
    real, fake = _logits(real_logits, "real_logits"), _logits(fake_logits, "fake_logits")
    if real.shape != fake.shape:
        raise ValueError(
            f"real_logits {tuple(real.shape)} and fake_logits {tuple(fake.shape)} must have the same "
            f"batch size (one real and one generated example per item)"
        )
    if kind == "non_saturating":
        # Goodfellow et al. 2014, eq. 1: -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit)
        real_term, fake_term = F.softplus(-real), F.softplus(fake)
    elif kind == "hinge":
        # Miyato et al. 2018, eq. 16: E[min(0, -1 + D(x))] + E[min(0, -1 - D(G(z)))], negated
        real_term, fake_term = F.relu(1.0 - real), F.relu(1.0 + fake)
    else:
        # Arjovsky et al. 2017, Algorithm 1: the critic maximises D(x) - D(G(z))
        real_term, fake_term = -real, fake
    return {"loss": real_term + fake_term, "real": real_term, "fake": fake_term}


def generator_loss(kind: Loss, fake_logits: Tensor) -> Tensor:
    """Per-example loss of the generator.

    Args:
        kind: as in ``discriminator_loss``.
        fake_logits: (B,) critic outputs D(G(z)) on generated data (not detached: the gradient
            flows through D into G).

    Returns:
        (B,) loss; the caller minimises its mean.
    """
    check_loss(kind)
    fake = _logits(fake_logits, "fake_logits")
    if kind == "non_saturating":
        # Goodfellow et al. 2014, sec. 3: maximise log D(G(z)) instead of minimising log(1 - D(G(z)))
        return F.softplus(-fake)
    # Miyato et al. 2018, eq. 17 (hinge) and Arjovsky et al. 2017 (Wasserstein): -D(G(z))
    return -fake


def _input_gradient(critic: Callable[[Tensor], Tensor], x: Tensor, scale: Union[float, Tensor]) -> Tensor:
    """Per-example gradient of the critic at x (B, ...) (a leaf that requires grad), with loss scaling.

    Returns the (B, ...) gradient in at least float32, divided by ``scale`` again, with its graph kept.
    """
    out = critic(x)
    if out.shape[0] != x.shape[0] or out.numel() != x.shape[0]:
        raise ValueError(f"the critic must return one logit per example, got shape {tuple(out.shape)}")
    # Examples are independent (no BatchNorm in the critic), so the gradient of the sum is the
    # per-example gradient. Scale before differentiating so float16 gradients do not underflow.
    out = out.to(torch.promote_types(out.dtype, torch.float32))
    (grad,) = torch.autograd.grad(outputs=(out * scale).sum(), inputs=x, create_graph=True)
    return grad.to(torch.promote_types(grad.dtype, torch.float32)) / scale  # (B, ...) unscaled


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    scale: Union[float, Tensor] = 1.0,
) -> Tensor:
    """WGAN-GP two-sided penalty (Gulrajani et al. 2017, Algorithm 1, lines 6-7), per example.

    x_hat = real + alpha (fake - real), alpha ~ U[0, 1] per example; the penalty is
    (||grad_x D(x_hat)||_2 - 1)^2. The graph is kept (``create_graph=True``), so the penalty
    backpropagates into the critic's parameters. The interpolation and the norm are computed in
    (at least) float32 whatever the autocast state; the critic sees x_hat in ``real``'s dtype.
    The critic must treat examples independently: no BatchNorm (the paper's sec. 4 uses none in the
    critic, or layer norm).

    Args:
        critic: maps (B, ...) inputs to (B,) logits, e.g. ``lambda x: D(x, y)`` for a conditional
            critic.
        real: (B, ...) real data.
        fake: (B, ...) generated data (detached here: the penalty does not train the generator).
        generator: draws alpha, for reproducible penalties; None uses the global RNG.
        scale: AMP loss scale (``GradScaler.get_scale()`` under ``16-mixed``); 1 for fp32 / bf16.

    Returns:
        (B,) penalty; the caller adds ``lambda * penalty.mean()`` (lambda = 10 in the paper).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    dtype = torch.promote_types(real.dtype, torch.float32)
    B = real.shape[0]
    rng_device = generator.device if generator is not None else real.device
    alpha = torch.rand(B, generator=generator, device=rng_device, dtype=dtype).to(real.device)  # (B,)
    alpha = alpha.view(B, *([1] * (real.dim() - 1)))  # (B, 1, ..., 1)
    real32, fake32 = real.detach().to(dtype), fake.detach().to(dtype)
    x_hat = (real32 + alpha * (fake32 - real32)).to(real.dtype).requires_grad_(True)  # (B, ...)
    grad = _input_gradient(critic, x_hat, scale)  # (B, ...)
    norm = torch.linalg.vector_norm(grad.flatten(1), ord=2, dim=1)  # (B,)
    return (norm - 1.0) ** 2  # Gulrajani et al. 2017, eq. 3


def r1_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, *, scale: Union[float, Tensor] = 1.0
) -> Tensor:
    """R1 penalty ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, eq. 9), per example.

    The graph is kept, so the penalty trains the critic. The squared norm is computed in float32.

    Args:
        critic: maps (B, ...) inputs to (B,) logits.
        real: (B, ...) real data (detached: the penalty differentiates with respect to a copy).
        scale: AMP loss scale under ``16-mixed``; 1 for fp32 / bf16.

    Returns:
        (B,) ||grad D(x)||^2; the caller adds ``gamma / 2 * penalty.mean()``.
    """
    x = real.detach().requires_grad_(True)  # (B, ...)
    grad = _input_gradient(critic, x, scale)  # (B, ...)
    return grad.flatten(1).pow(2).sum(dim=1)  # (B,)
