"""CycleGAN as a LightningModule: unpaired translation between domains A and B, four players.

Paper: Zhu, Park, Isola & Efros 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks". Two generators G: A -> B (``net_g_ab``) and F: B -> A (``net_g_ba``), two
discriminators D_B (``net_d_b``: real B vs G(a)) and D_A (``net_d_a``: real A vs F(b)); LSGAN losses,
cycle weight lambda = 10, identity weight 0.5 lambda (sec. 4 and 5.2, ``losses.py``); the
discriminators see a history of 50 generated images (``pool.py``); Adam with lr 2e-4, betas
(0.5, 0.999), constant for the first half of training, then linear to 0 (sec. 4).

Schedule (the authors' ``cycle_gan_model.optimize_parameters``): every ``training_step`` takes one
unpaired batch (a, b), computes G(a), F(G(a)), F(b), G(F(b)), makes one step of the generators'
optimiser (over both generators, the discriminators frozen by ``toggled_optimizer``), then one step
of the discriminators' optimiser (over both discriminators) on pooled, detached fakes. Each
optimiser steps once per batch; ``trainer.global_step`` grows by 2 per batch. Under DDP each
backward pass leaves the other optimiser's parameters unused: ``--trainer.strategy
ddp_find_unused_parameters_true`` (``setup`` stops with that advice otherwise). Each rank keeps its
own pool; its random draws are this rank's slice of a world-sized draw (``paradigm.this_rank``) and
the pools are saved in the checkpoint, so a resumed run continues exactly.

Batches (docs/architecture.md, "Batches"): ``(a, b, label_a, label_b)``: (B, Ca, H, W) and
(B, Cb, H, W) in [-1, 1], labels (B,) int64 (evaluation only: label preservation).

Shape legend: B batch, Ca/Cb channels of domains A/B, H/W image, h/w a PatchGAN's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.translation import losses
from lit_genai.translation.base import Direction, TranslationModule, TranslationSampling
from lit_genai.translation.pool import ImagePool


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))  # Zhu et al. 2017, sec. 4


class CycleGAN(TranslationModule):
    """Unpaired translation A <-> B (CycleGAN).

    Args:
        net_g_ab: Generator A -> B, ``(B, Ca, H, W) -> (B, Cb, H, W)`` in [-1, 1], e.g.
            ``lit_genai.nn.cyclegan.CycleGANGenerator``.
        net_g_ba: Generator B -> A.
        net_d_a: Discriminator of domain A, ``(B, Ca, H, W) -> (B, 1, h, w)`` logits, e.g.
            ``lit_genai.nn.pix2pix.PatchDiscriminator`` (``source_channels: 0``, instance norm).
        net_d_b: Discriminator of domain B.
        source_shape: (Ca, H, W) of a domain-A image; linked from the data module.
        sample_shape: (Cb, H, W) of a domain-B image; linked from the data module.
        loss: Adversarial loss: ``lsgan`` (the paper) or ``vanilla``.
        cycle_weight: lambda of the cycle losses (the paper's 10).
        identity_weight: Identity loss weight relative to lambda (the paper's 0.5; 0 = off; needs
            Ca = Cb).
        pool_size: Generated images each discriminator's pool keeps (the paper's 50; 0 = no pool).
        optimizer_g: Optimiser over both generators (default Adam(2e-4, betas (0.5, 0.999))).
        optimizer_d: Optimiser over both discriminators (the same default).
        lr_constant_steps: Optimiser steps (batches) at the initial LR before the linear decay.
        lr_decay_steps: Optimiser steps of the linear decay to 0 after them; None = constant LR.
        num_examples: E, validation images of each domain stored for ``sample()`` without an
            ``image`` condition.
        extractor: Feature extractor of the evaluation's FID and label preservation (``"mnist"``, or
            a classifier checkpoint path); None = the cycle errors only.
        sampling: Inference-time settings (``TranslationSampling``: ``direction``); kept out of
            checkpoints.
    """

    ema_target = "generators"
    directions = ("a2b", "b2a")

    def __init__(
        self,
        net_g_ab: nn.Module,
        net_g_ba: nn.Module,
        net_d_a: nn.Module,
        net_d_b: nn.Module,
        source_shape: Sequence[int] = (1, 28, 28),
        sample_shape: Sequence[int] = (1, 28, 28),
        loss: losses.Adversarial = "lsgan",
        cycle_weight: float = 10.0,
        identity_weight: float = 0.5,
        pool_size: int = 50,
        optimizer_g: OptimizerCallable = _adam,
        optimizer_d: OptimizerCallable = _adam,
        lr_constant_steps: int = 0,
        lr_decay_steps: Optional[int] = None,
        num_examples: int = 64,
        extractor: Optional[str] = None,
        sampling: TranslationSampling = TranslationSampling(),
    ) -> None:
        super().__init__()
        nets = ("net_g_ab", "net_g_ba", "net_d_a", "net_d_b", "optimizer_g", "optimizer_d")
        save_plain_hyperparameters(self, objects=nets)
        self._init_common(
            source_shape, sample_shape, num_examples, extractor, lr_constant_steps, lr_decay_steps, sampling
        )
        losses.adversarial(loss, torch.zeros(1, 1), True)  # an unknown loss is one line, now
        if identity_weight > 0 and self.source_shape[0] != self.sample_shape[0]:
            raise ConfigError(
                f"model.identity_weight={identity_weight} feeds each generator images of its output domain, "
                f"which needs equal channels (A has {self.source_shape[0]}, B {self.sample_shape[0]}): set 0"
            )
        # One container for both generators: the EMA target; the discriminators are never averaged.
        self.generators = nn.ModuleDict({"a2b": net_g_ab, "b2a": net_g_ba})
        self.discriminators = nn.ModuleDict({"a": net_d_a, "b": net_d_b})
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        a, b = self.source_shape, self.sample_shape
        for net, name, src, out in ((net_g_ab, "net_g_ab", a, b), (net_g_ba, "net_g_ba", b, a)):
            paradigm.check_net(net, f"model.{name}", sample_shape=src, channels_attr="in_channels")
            paradigm.check_net(net, f"model.{name}", sample_shape=out, channels_attr="out_channels")
        paradigm.check_net(net_d_a, "model.net_d_a", sample_shape=a, channels_attr="in_channels")
        paradigm.check_net(net_d_b, "model.net_d_b", sample_shape=b, channels_attr="in_channels")
        self.pools = {"a": ImagePool(pool_size), "b": ImagePool(pool_size)}  # of F(b) and G(a)

    def generator(self, direction: Direction) -> nn.Module:
        return self.generators[direction]

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        real_a, real_b = batch[0], batch[1]  # (B, Ca, H, W), (B, Cb, H, W) in [-1, 1]
        opt_g, opt_d = self.optimizers()
        kind, hp = self.hparams.loss, self.hparams
        g_ab, g_ba = self.generators["a2b"], self.generators["b2a"]
        d_a, d_b = self.discriminators["a"], self.discriminators["b"]

        # Generators' step (the code's backward_G): D_A and D_B frozen by the toggle.
        with self.toggled_optimizer(opt_g):
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)  # G(a), F(b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)  # F(G(a)), G(F(b)): the cycles (eq. 2)
            idt = hp.identity_weight > 0
            g_terms = losses.cyclegan_generator_terms(
                kind,
                d_b(fake_b),
                d_a(fake_a),
                real_a,
                real_b,
                rec_a,
                rec_b,
                idt_a=g_ab(real_b) if idt else None,  # G(b) should be b (sec. 5.2)
                idt_b=g_ba(real_a) if idt else None,  # F(a) should be a
                cycle_weight=hp.cycle_weight,
                identity_weight=hp.identity_weight,
            )
            opt_g.zero_grad()
            self.manual_backward(g_terms["loss"].mean())
            opt_g.step()

        # Discriminators' step (backward_D_A, backward_D_B) on a history of fakes (pool.py).
        with self.toggled_optimizer(opt_d):
            pooled_b = self._pooled("b", fake_b)  # (B, Cb, H, W), detached
            pooled_a = self._pooled("a", fake_a)
            d_terms_b = losses.discriminator_terms(kind, d_b(real_b), d_b(pooled_b))
            d_terms_a = losses.discriminator_terms(kind, d_a(real_a), d_a(pooled_a))
            opt_d.zero_grad()
            self.manual_backward((d_terms_a["loss"] + d_terms_b["loss"]).mean())
            opt_d.step()
        self._step_schedulers()
        for key in ("gan_a", "gan_b", "cycle_a", "cycle_b", "idt_a", "idt_b"):
            self.log(f"train/{key}", g_terms[key].mean())
        self.log("train/g_loss", g_terms["loss"].mean(), prog_bar=True)
        self.log("train/loss", g_terms["loss"].mean())
        self.log("train/d_loss_a", d_terms_a["loss"].mean())
        self.log("train/d_loss_b", d_terms_b["loss"].mean())
        self.log("train/d_loss", (d_terms_a["loss"] + d_terms_b["loss"]).mean(), prog_bar=True)

    def _pooled(self, domain: str, fakes: Tensor) -> Tensor:
        """The pool's answer for this rank's fakes (B, C, H, W), from world-sized random draws."""
        B, pool = fakes.shape[0], self.pools[domain]
        u = paradigm.this_rank(lambda n: torch.rand(n, device=fakes.device), B, self.trainer)  # (B,)
        slots = paradigm.this_rank(
            lambda n: torch.randint(0, max(pool.size, 1), (n,), device=fakes.device), B, self.trainer
        )  # (B,)
        return pool.query(fakes.detach(), u, slots)

    def _evaluate(self, batch: tuple[Tensor, ...], stage: str) -> None:
        real_a, real_b = batch[0], batch[1]
        label_a = batch[2] if len(batch) > 2 else None
        label_b = batch[3] if len(batch) > 3 else None
        fake_b = self.generators["a2b"](real_a).clamp(-1, 1)  # (B, Cb, H, W)
        fake_a = self.generators["b2a"](real_b).clamp(-1, 1)
        cycle_a = (self.generators["b2a"](fake_b) - real_a).abs().flatten(1).mean(1)  # (B,)
        cycle_b = (self.generators["a2b"](fake_a) - real_b).abs().flatten(1).mean(1)
        self._score(stage, "_a2b", fake_b, None, label_a, real_b)
        self._score(stage, "_b2a", fake_a, None, label_b, real_a)
        self.log(f"{stage}/cycle_a", cycle_a.mean(), sync_dist=True)
        self.log(f"{stage}/cycle_b", cycle_b.mean(), sync_dist=True)
        loss = (cycle_a + cycle_b).mean()  # the cycle reconstruction error: lower is better
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        opt_g = self.optimizer_g(self.generators.parameters())
        opt_d = self.optimizer_d(self.discriminators.parameters())
        return self._linear_schedulers([opt_g, opt_d])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["image_pools"] = {domain: pool.state_dict() for domain, pool in self.pools.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for domain, state in checkpoint.get("image_pools", {}).items():
            self.pools[domain].load_state_dict(state)
