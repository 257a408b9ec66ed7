"""Losses of image-to-image translation, as pure functions returning per-example terms.

Implements:
    - Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"
      (pix2pix), eq. 1-4: the conditional GAN loss of a PatchGAN (the mean over its patches) plus
      lambda * ||y - G(x)||_1 with lambda = 100 (sec. 4); the discriminator's loss is halved
      ("we divide the objective by 2 while optimizing D", sec. 3.3).
    - Mao et al. 2017, "Least Squares Generative Adversarial Networks": (D(x) - 1)^2 + D(G(z))^2 for
      the discriminator, (D(G(z)) - 1)^2 for the generator, which CycleGAN uses (Zhu et al. 2017,
      sec. 4, "Training details").
    - Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
      Networks" (CycleGAN), eq. 2-3 and sec. 5.2: the cycle loss lambda (||F(G(a)) - a||_1 +
      ||G(F(b)) - b||_1) with lambda = 10, and the identity loss ||G(b) - b||_1 + ||F(a) - a||_1
      weighted by 0.5 * lambda (the authors' code: ``lambda_identity * lambda_A``).

Every function returns a dict of per-example (B,) terms in at least float32, ``"loss"`` the weighted
sum the caller minimises as ``loss.mean()``; the others are logged.

Shapes: B batch; images (B, C, H, W); PatchGAN logits (B, 1, h, w) or (B,).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_genai.errors import ConfigError

Adversarial = Literal["vanilla", "lsgan"]
ADVERSARIAL: tuple[str, ...] = get_args(Adversarial)


def _float(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def per_example_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference of each example: (B, ...) x 2 -> (B,)."""
    return (_float(a) - _float(b)).abs().flatten(1).mean(dim=1)


def adversarial(kind: Adversarial, logits: Tensor, real: bool) -> Tensor:
    """Per-example loss of judging ``logits`` (B, ...) as real (target 1) or fake (target 0), averaged
    over a PatchGAN's patches: ``vanilla`` the cross-entropy of pix2pix (sigmoid logits), ``lsgan``
    the squared error of Mao et al. 2017. -> (B,)."""
    if kind not in ADVERSARIAL:
        raise ConfigError(f"unknown adversarial loss {kind!r}; choose one of {', '.join(ADVERSARIAL)}")
    logits = _float(logits).flatten(1)  # (B, h * w)
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "vanilla":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        loss = (logits - target) ** 2  # Mao et al. 2017, eq. 2 with a = 0, b = c = 1
    return loss.mean(dim=1)  # (B,)


def discriminator_terms(kind: Adversarial, real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """A discriminator's per-example loss, 0.5 (real + fake) (pix2pix sec. 3.3; CycleGAN's code).

    Returns {"loss", "real", "fake"}, each (B,).
    """
    real, fake = adversarial(kind, real_logits, True), adversarial(kind, fake_logits, False)
    return {"loss": 0.5 * (real + fake), "real": real, "fake": fake}


def pix2pix_generator_terms(
    kind: Adversarial, fake_logits: Tensor, fake: Tensor, target: Tensor, l1_weight: float = 100.0
) -> dict[str, Tensor]:
    """pix2pix's generator objective (Isola et al. 2017, eq. 4): L_cGAN + lambda L_L1.

    Args:
        kind: ``vanilla`` (the paper) or ``lsgan``.
        fake_logits: (B, 1, h, w) D(source, G(source)), not detached.
        fake: (B, C, H, W) G(source).
        target: (B, C, H, W) the paired real image y.
        l1_weight: lambda (the paper's 100).

    Returns:
        {"loss": gan + lambda * l1, "gan": (B,), "l1": (B,)} with l1 the mean |y - G(x)| per example.
    """
    gan = adversarial(kind, fake_logits, True)
    l1 = per_example_l1(fake, target)  # eq. 3
    return {"loss": gan + l1_weight * l1, "gan": gan, "l1": l1}


def cyclegan_generator_terms(
    kind: Adversarial,
    logits_fake_b: Tensor,
    logits_fake_a: Tensor,
    real_a: Tensor,
    real_b: Tensor,
    rec_a: Tensor,
    rec_b: Tensor,
    idt_a: Tensor | None = None,
    idt_b: Tensor | None = None,
    cycle_weight: float = 10.0,
    identity_weight: float = 0.5,
) -> dict[str, Tensor]:
    """Both generators' objective (Zhu et al. 2017, eq. 3, plus the identity loss of sec. 5.2).

    G: A -> B and F: B -> A. The adversarial terms ask D_B(G(a)) and D_A(F(b)) to be real; the cycle
    terms are ||F(G(a)) - a||_1 and ||G(F(b)) - b||_1 (eq. 2), each weighted by ``cycle_weight``;
    the identity terms ||G(b) - b||_1 and ||F(a) - a||_1 are weighted by ``identity_weight *
    cycle_weight`` (the code's ``lambda_identity * lambda_B`` and ``* lambda_A``).

    Args:
        logits_fake_b: (B, 1, h, w) D_B(G(a)). logits_fake_a: D_A(F(b)).
        real_a, real_b: (B, C, H, W) images of the two domains.
        rec_a: F(G(a)); rec_b: G(F(b)).
        idt_a: G(b), the A->B generator applied to a B image (should leave it as it is);
            idt_b: F(a). None when ``identity_weight`` is 0.
        cycle_weight: lambda (the paper's 10).
        identity_weight: the identity loss's weight relative to lambda (the paper's 0.5; 0 = off).

    Returns:
        {"loss", "gan_b", "gan_a", "cycle_a", "cycle_b", "idt_a", "idt_b"}, each (B,) and unweighted
        but for "loss".
    """
    gan_b, gan_a = adversarial(kind, logits_fake_b, True), adversarial(kind, logits_fake_a, True)
    cycle_a, cycle_b = per_example_l1(rec_a, real_a), per_example_l1(rec_b, real_b)
    loss = gan_a + gan_b + cycle_weight * (cycle_a + cycle_b)
    zero = torch.zeros_like(cycle_a)
    idt_a_term = per_example_l1(idt_a, real_b) if idt_a is not None else zero  # ||G(b) - b||_1
    idt_b_term = per_example_l1(idt_b, real_a) if idt_b is not None else zero  # ||F(a) - a||_1
    if identity_weight > 0:
        if idt_a is None or idt_b is None:
            raise ValueError("identity_weight > 0 needs idt_a = G(b) and idt_b = F(a)")
        loss = loss + identity_weight * cycle_weight * (idt_a_term + idt_b_term)
    return {
        "loss": loss,
        "gan_b": gan_b,
        "gan_a": gan_a,
        "cycle_a": cycle_a,
        "cycle_b": cycle_b,
        "idt_a": idt_a_term,
        "idt_b": idt_b_term,
    }


def linear_decay(step: int, constant_steps: int, decay_steps: int | None) -> float:
    """The LR factor of pix2pix / CycleGAN's ``linear`` policy, in optimiser steps: 1 for
    ``constant_steps``, then linearly to 0 over ``decay_steps`` (the papers: 100 epochs + 100 epochs);
    ``decay_steps`` None keeps it at 1."""
    if decay_steps is None:
        return 1.0
    return max(0.0, 1.0 - max(0, step - constant_steps) / decay_steps)
