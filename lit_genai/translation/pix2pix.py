"""pix2pix as a LightningModule: paired image-to-image translation by a conditional GAN plus L1.

Paper: Isola, Zhu, Zhou & Efros 2017, "Image-to-Image Translation with Conditional Adversarial
Networks". Objective (eq. 4): G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G), lambda = 100;
the discriminator is a PatchGAN that sees concat(source, image) (``nn.pix2pix``); Adam with lr 2e-4,
betas (0.5, 0.999) (sec. 3.3); the authors' code keeps the LR for the first half of the epochs and
decays it linearly to 0 over the second half (``lr_constant_steps``, ``lr_decay_steps``).

Schedule (the authors' ``pix2pix_model.optimize_parameters``): every ``training_step`` takes one
paired batch, makes one discriminator step on (source, target) vs (source, G(source).detach()) with
the loss halved (sec. 3.3), then one generator step on the same G(source): the GAN term plus
lambda * L1. So each optimiser steps once per batch and ``trainer.global_step`` grows by 2 per batch.
Manual optimisation with ``toggled_optimizer`` as in ``gan.GAN``; under DDP the toggled player's
parameters are unused in the other's backward pass: ``--trainer.strategy
ddp_find_unused_parameters_true`` (``setup`` stops with that advice otherwise). Losses are pure
functions in ``losses.py``; sampling, evaluation and the DDP checks are in ``base.py``.

Batches (docs/architecture.md, "Batches"): ``(source, target, label)``: (B, Cs, H, W) and
(B, C, H, W) in [-1, 1], label (B,) int64 (used only for label preservation in evaluation).

Shape legend: B batch, Cs source channels, C image channels, H/W image, h/w the PatchGAN's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.translation import losses
from lit_genai.translation.base import Direction, TranslationModule, TranslationSampling


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))  # Isola et al. 2017, sec. 3.3


class Pix2Pix(TranslationModule):
    """Paired translation source -> target (pix2pix).

    Args:
        net_g: The generator ``(B, Cs, H, W) -> (B, C, H, W)`` in [-1, 1], e.g.
            ``lit_genai.nn.pix2pix.UNetGenerator``; attributes ``in_channels``, ``out_channels``,
            ``image_size`` are checked against the data.
        net_d: The conditional discriminator ``(image (B, C, H, W), source (B, Cs, H, W)) -> (B, 1, h, w)``
            logits, e.g. ``lit_genai.nn.pix2pix.PatchDiscriminator`` with ``source_channels`` = Cs.
        source_shape: (Cs, H, W) of a source image; linked from the data module.
        sample_shape: (C, H, W) of a target image; linked from the data module.
        loss: Adversarial loss: ``vanilla`` (the paper's cross-entropy) or ``lsgan``.
        l1_weight: lambda of the L1 term (the paper's 100).
        optimizer_g: Optimiser of the generator (default Adam(2e-4, betas (0.5, 0.999)), the paper's).
        optimizer_d: Optimiser of the discriminator (the same default).
        lr_constant_steps: Optimiser steps (batches) at the initial LR before the linear decay.
        lr_decay_steps: Optimiser steps of the linear decay to 0 after them; None = constant LR.
        num_examples: E, validation sources stored for ``sample()`` without an ``image`` condition.
        extractor: Feature extractor of the evaluation's FID and label preservation (``"mnist"``, or
            a classifier checkpoint path); None = L1 and PSNR only.
        sampling: Inference-time settings (``TranslationSampling``); kept out of checkpoints.
    """

    ema_target = "net_g"
    last_optimizer = 0  # the generator steps last in a batch

    def __init__(
        self,
        net_g: nn.Module,
        net_d: nn.Module,
        source_shape: Sequence[int] = (1, 28, 28),
        sample_shape: Sequence[int] = (1, 28, 28),
        loss: losses.Adversarial = "vanilla",
        l1_weight: float = 100.0,
        optimizer_g: OptimizerCallable = _adam,
        optimizer_d: OptimizerCallable = _adam,
        lr_constant_steps: int = 0,
        lr_decay_steps: Optional[int] = None,
        num_examples: int = 64,
        extractor: Optional[str] = None,
        sampling: TranslationSampling = TranslationSampling(),
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("net_g", "net_d", "optimizer_g", "optimizer_d"))
        self._init_common(
            source_shape, sample_shape, num_examples, extractor, lr_constant_steps, lr_decay_steps, sampling
        )
        losses.adversarial(loss, torch.zeros(1, 1), True)  # an unknown loss is one line, now
        self.net_g, self.net_d = net_g, net_d
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        paradigm.check_net(net_g, "model.net_g", sample_shape=self.source_shape, channels_attr="in_channels")
        paradigm.check_net(net_g, "model.net_g", sample_shape=self.sample_shape, channels_attr="out_channels")
        paradigm.check_net(net_d, "model.net_d", sample_shape=self.sample_shape, channels_attr="in_channels")
        paradigm.check_net(
            net_d, "model.net_d", sample_shape=self.source_shape, channels_attr="source_channels"
        )

    def generator(self, direction: Direction) -> nn.Module:
        return self.net_g

    def forward(self, source: Tensor) -> Tensor:
        """(B, Cs, H, W) sources -> (B, C, H, W) translations (in the networks' current mode)."""
        return self.net_g(source)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        source, target = batch[0], batch[1]  # (B, Cs, H, W), (B, C, H, W) in [-1, 1]
        opt_g, opt_d = self.optimizers()
        kind = self.hparams.loss
        fake = self.net_g(source)  # (B, C, H, W); one forward for both steps, as in the authors' code

        # Discriminator step: real pairs vs fake pairs, the fake detached (sec. 3.3: the loss halved).
        with self.toggled_optimizer(opt_d):
            real_logits = self.net_d(target, source)  # (B, 1, h, w)
            fake_logits = self.net_d(fake.detach(), source)
            d_terms = losses.discriminator_terms(kind, real_logits, fake_logits)
            opt_d.zero_grad()
            self.manual_backward(d_terms["loss"].mean())
            opt_d.step()

        # Generator step on the same G(source): fool D and stay close to the target (eq. 4).
        with self.toggled_optimizer(opt_g):
            g_terms = losses.pix2pix_generator_terms(
                kind, self.net_d(fake, source), fake, target, self.hparams.l1_weight
            )
            opt_g.zero_grad()
            self.manual_backward(g_terms["loss"].mean())
            opt_g.step()
        self._step_schedulers()
        self.log("train/d_loss", d_terms["loss"].mean(), prog_bar=True)
        self.log("train/g_loss", g_terms["gan"].mean(), prog_bar=True)
        self.log("train/l1", g_terms["l1"].mean())
        self.log("train/loss", g_terms["loss"].mean())

    def _evaluate(self, batch: tuple[Tensor, ...], stage: str) -> None:
        source, target = batch[0], batch[1]
        labels = batch[2] if len(batch) > 2 else None
        output = self.net_g(source).clamp(-1, 1)  # eval mode: running statistics, no dropout
        self._score(stage, "", output, target, labels, target)
        l1 = (output - target).abs().flatten(1).mean(1)
        self.log(f"{stage}/loss", l1.mean(), prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        opt_g = self.optimizer_g(self.net_g.parameters())
        opt_d = self.optimizer_d(self.net_d.parameters())
        return self._linear_schedulers([opt_g, opt_d])
