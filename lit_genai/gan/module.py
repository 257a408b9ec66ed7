"""Generative adversarial networks as a LightningModule: alternating player steps, penalties, sampling.

Papers: Goodfellow et al. 2014 (GAN, non-saturating loss), Radford et al. 2016 (DCGAN), Arjovsky et
al. 2017 (WGAN), Gulrajani et al. 2017 (WGAN-GP: gradient penalty, n_critic, linear LR decay),
Miyato et al. 2018 (SNGAN: hinge loss, n_dis), Mescheder et al. 2018 (R1), Miyato & Koyama 2018
(projection discriminator for class-conditional GANs).

The losses and penalties live in ``losses.py``; both networks are injected (``net_g``, the
generator: ``(z (B, Z), y (B,) or None) -> (B, C, H, W)`` in [-1, 1]; ``net_d``, the discriminator:
``(x, y) -> (B,)`` logits). This file schedules the two players.

Schedule (the reference code: WGAN-GP's gan_cifar_resnet.py, SNGAN's updater, Mimicry): every
``training_step`` takes one batch and makes one discriminator step on it; after every
``n_critic``-th discriminator step, counted over the whole run (not per epoch), the generator makes
one step on fresh noise. So n_critic = 5 is "5 critic steps on 5 batches, then 1 generator step".

Counting. Under manual optimisation Lightning's ``trainer.global_step`` counts every
``optimizer.step()`` of *both* players: after d discriminator steps it is d + d // n_critic. Hence
``trainer.max_steps`` = discriminator + generator steps: 100k generator steps at n_critic = 5 is
``max_steps: 600000``; DCGAN's 1:1 schedule doubles it. The module's own counters ``d_steps`` and
``g_steps`` count real optimiser steps only (a step the ``16-mixed`` gradient scaler skips for
inf/NaN gradients counts for nothing: no n_critic progress, no LR scheduler step) and are saved in
checkpoints. Each player's LR scheduler steps only when that player steps:
the generator's decays over ``decay_steps`` generator steps, the discriminator's over
``decay_steps * n_critic`` discriminator steps, so both reach zero together, as in the reference
code (which decays both per generator iteration, i.e. in a staircase). The EMA callback counts
generator optimiser steps (``ema_target = "net_g"``).

Mixed precision. Gradient clipping happens in ``on_before_optimizer_step``: Lightning 2.6 unscales
``16-mixed`` gradients inside ``opt.step()`` just before that hook, so clipping earlier in
``training_step`` would clip scaled gradients. The penalties get the scaler's current scale.

DDP. Toggling the optimisers leaves one player's parameters unused in each backward pass, which
DDP only accepts with ``--trainer.strategy ddp_find_unused_parameters_true`` (Lightning issues
#20328, #20866); ``setup`` stops with that advice otherwise. Ranks seeded alike (Lightning's
``seed_everything``) would draw identical noise, so every rank draws the noise of the whole world
batch and keeps its own slice: the noise is distinct per rank and the RNG streams stay in step.
Batch norm normalises each rank's batch with its own statistics, as in any DDP run (on GPUs,
``--trainer.sync_batchnorm true`` uses the world batch's); its running statistics are averaged over
the ranks after every optimiser step, so every rank, the checkpoint and ``sample()`` hold the same
ones (``_average_batch_norm_statistics``).
Sharded strategies (FSDP, DeepSpeed) are refused in ``setup`` with one line: the penalties'
double backward and the two optimisers over one sharded module are not supported there.

Validation (``val/loss``): the sliced Wasserstein distance (``metrics/sliced_wasserstein.py``), in
pixel space, between held-out real images and as many generated from fixed noise (``eval_z``). It
is independent of the discriminator, so a checkpoint monitor does not prefer a strong
discriminator (a weak generator); lower is better; prefer an FID from the evaluation callback when
one is configured. The discriminator loss on the same pairs is logged as ``val/d_loss`` (a gap to
``train/d_loss`` means the discriminator overfits).

Shape legend: B batch, C/H/W image, Z latent_dim, K slicing directions, E fixed noise vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from lit_genai import paradigm, sharding
from lit_genai.conditions import Cond, labels_of, sample_labels
from lit_genai.errors import ConfigError
from lit_genai.gan import losses
from lit_genai.gan.checks import check_nets, check_settings
from lit_genai.gan.sampling import truncate
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.metrics.sliced_wasserstein import random_directions, sliced_wasserstein


@dataclass(frozen=True)
class GANSampling(paradigm.SamplingSettings):
    """Inference-time settings of a GAN (docs/architecture.md, "Sampling settings").

    Args:
        truncation: The truncation trick (Brock et al. 2019, BigGAN sec. 3.1): draw z from the
            standard normal truncated to [-truncation, truncation] in each coordinate, trading
            variety for fidelity; None = the plain N(0, I) the generator was trained on.
    """

    truncation: Optional[float] = None


EVAL_NOISE = 1024  # E: fixed noise vectors, reused cyclically by the validation batches
NUM_DIRECTIONS = 128  # K: projections of the sliced Wasserstein distance


class GAN(LightningModule):
    """Generative adversarial network (unconditional or class-conditional) trained by alternating steps.

    Args:
        net_g: The generator, mapping ``(z (B, latent_dim), y (B,) or None) -> (B, C, H, W)`` in
            [-1, 1], e.g. ``lit_genai.nn.dcgan.DCGANGenerator``; needs attributes ``latent_dim``, and
            for the shape checks ``out_channels``, ``image_size``, ``num_classes``.
        net_d: The discriminator, mapping ``(x (B, C, H, W), y (B,) or None) -> (B,)`` logits, e.g.
            ``lit_genai.nn.dcgan.DCGANDiscriminator``; attributes ``in_channels``, ``image_size``,
            ``num_classes`` are checked against the data.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes the data offers; linked from the data module. The networks
            decide whether they are used: networks with ``num_classes=0`` make an unconditional GAN
            (labels are ignored); with ``num_classes > 0`` both must match the data, the
            discriminator sees the real labels, and fakes get uniformly drawn labels.
        loss: Adversarial loss: ``non_saturating`` (Goodfellow et al. 2014; DCGAN), ``hinge``
            (SNGAN) or ``wasserstein`` (WGAN; needs ``gradient_penalty`` or a spectrally normalised
            critic).
        gradient_penalty: Weight lambda of the WGAN-GP penalty (Gulrajani et al. 2017: 10); 0 = off.
        r1_gamma: Weight gamma of the R1 penalty on real data, added as gamma / 2 * R1 (Mescheder et
            al. 2018); 0 = off.
        n_critic: Discriminator steps (one per batch) per generator step (WGAN-GP 5, SNGAN 5, DCGAN 1).
        optimizer_g: Optimiser of the generator's parameters.
        optimizer_d: Optimiser of the discriminator's parameters.
        lr_decay: ``linear``: both learning rates fall linearly to 0 over ``decay_steps`` generator
            steps (WGAN-GP, SNGAN); ``none`` keeps them constant.
        decay_steps: Generator steps of the linear decay. Default: the run's generator steps,
            ``trainer.max_steps // (n_critic + 1)`` (``global_step`` counts both players' steps),
            or ``max_epochs * batches per epoch // n_critic`` when ``max_steps`` is unset. Set it
            when resuming with a longer run, or the decay horizon moves.
        clip_norm_g: Clip the generator's gradient norm to this value (None = no clipping).
        clip_norm_d: Clip the discriminator's gradient norm to this value (None = no clipping).
        seed: Seed of the fixed evaluation noise and base seed of ``predict``: sample i uses the
            generator seed + i (``paradigm.predict_step``).
        sampling: Inference-time settings (``GANSampling``); kept out of checkpoints.
    """

    modality = "image"
    ema_target = "net_g"  # the discriminator is never averaged
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        net_g: nn.Module,
        net_d: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 0,
        loss: losses.Loss = "non_saturating",
        gradient_penalty: float = 0.0,
        r1_gamma: float = 0.0,
        n_critic: int = 1,
        optimizer_g: OptimizerCallable = torch.optim.Adam,
        optimizer_d: OptimizerCallable = torch.optim.Adam,
        lr_decay: Literal["none", "linear"] = "none",
        decay_steps: Optional[int] = None,
        clip_norm_g: Optional[float] = None,
        clip_norm_d: Optional[float] = None,
        seed: int = 0,
        sampling: GANSampling = GANSampling(),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        save_plain_hyperparameters(self, objects=("net_g", "net_d", "optimizer_g", "optimizer_d"))
        self.net_g, self.net_d = net_g, net_d
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = getattr(net_g, "num_classes", 0)  # the classes the model uses
        self.conditions = paradigm.conditions_of(self.num_classes)
        self.sampling = sampling
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        check_settings(loss, gradient_penalty, r1_gamma, n_critic, decay_steps, net_d)
        check_nets(net_g, net_d, self.sample_shape, num_classes)
        self.latent_dim = int(net_g.latent_dim)
        self.d_steps = 0  # real discriminator optimiser steps so far (saved in checkpoints)
        self.g_steps = 0  # real generator optimiser steps so far
        self._stepped = {"g": False, "d": False}  # set by the optimisers' step hooks (on_fit_start)
        self._hooks: list[Any] = []
        rng = torch.Generator().manual_seed(seed)
        eval_z = torch.randn(EVAL_NOISE, self.latent_dim, generator=rng)  # (E, Z)
        self.register_buffer("eval_z", eval_z, persistent=False)
        directions = random_directions(math.prod(self.sample_shape), NUM_DIRECTIONS, rng)  # (CHW, K)
        self.register_buffer("eval_directions", directions, persistent=False)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """(B, Z) noise and (B,) labels (conditional models) -> (B, C, H, W) images."""
        return self.net_g(z, y if self.num_classes > 0 else None)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch  # (B, C, H, W) in [-1, 1], (B,)
        y = y if self.num_classes > 0 else None
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers() or (None, None)
        kind, B = self.hparams.loss, x.shape[0]

        # Discriminator step on this batch (Gulrajani et al. 2017, Algorithm 1, lines 2-9).
        with self.toggled_optimizer(opt_d):
            z, y_fake = self._noise(B)
            fake = self.net_g(z, y_fake).detach()  # (B, C, H, W); the toggle froze G anyway
            real_logits, fake_logits = self.net_d(x, y), self.net_d(fake, y_fake)  # (B,) each
            d_loss = losses.discriminator_loss(kind, real_logits, fake_logits)["loss"].mean()
            loss = d_loss
            # The penalties score interpolates and reals with the real labels.
            critic = lambda h: self.net_d(h, y)
            if self.hparams.gradient_penalty > 0:
                gp = losses.gradient_penalty(critic, x, fake, scale=self._loss_scale()).mean()
                loss = loss + self.hparams.gradient_penalty * gp
                self.log("train/gp", gp)
            if self.hparams.r1_gamma > 0:
                r1 = losses.r1_penalty(critic, x, scale=self._loss_scale()).mean()
                loss = loss + self.hparams.r1_gamma / 2 * r1  # Mescheder et al. 2018, eq. 9
                self.log("train/r1", r1)
            opt_d.zero_grad()
            self.manual_backward(loss)
            opt_d.step()  # gradients are clipped in on_before_optimizer_step
        self.log("train/d_loss", d_loss, prog_bar=True)
        self.log("train/d_real", real_logits.detach().float().mean())
        self.log("train/d_fake", fake_logits.detach().float().mean())
        if not self._took_step("d", sched_d):  # skipped by the AMP scaler: no progress towards G's step
            return
        self.d_steps += 1

        if self.d_steps % self.hparams.n_critic != 0:
            return
        # Generator step on fresh noise (Algorithm 1, lines 11-12); the toggle keeps D's gradients out.
        with self.toggled_optimizer(opt_g):
            z, y_fake = self._noise(B)
            fake_logits = self.net_d(self.net_g(z, y_fake), y_fake)  # (B,)
            g_loss = losses.generator_loss(kind, fake_logits).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        self.log("train/g_loss", g_loss, prog_bar=True)
        if self._took_step("g", sched_g):
            self.g_steps += 1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside opt.step(), after Lightning unscaled 16-mixed gradients: the place to clip.
        is_generator = optimizer is self.trainer.optimizers[0]
        clip = self.hparams.clip_norm_g if is_generator else self.hparams.clip_norm_d
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        # After this player's forward passes, before the EMA's step hook copies the buffers.
        self._average_batch_norm_statistics()

    def on_fit_start(self) -> None:
        # An optimiser's step post hook runs only when its step really happens: the 16-mixed
        # GradScaler skips optimizer.step() on inf/NaN gradients, so these flags tell real steps.
        for key, optimizer in zip("gd", self.trainer.optimizers, strict=True):
            self._hooks.append(
                optimizer.register_step_post_hook(lambda *_, k=key: self._stepped.update({k: True}))
            )

    def on_fit_end(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before FSDP / DeepSpeed wrap the module
            sharding.refuse_sharded(
                self.trainer,
                "a GAN",
                "its two optimisers step parts of one sharded module, and R1 and the gradient penalty "
                "backpropagate through the discriminator twice",
                "train it with --trainer.strategy ddp_find_unused_parameters_true",
            )
        strategy = self.trainer.strategy
        if stage != "fit" or not isinstance(strategy, DDPStrategy):
            return
        if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters"):
            raise ConfigError(
                "a GAN leaves one player's parameters unused in each backward pass, which DDP only accepts "
                "with unused-parameter detection: use --trainer.strategy ddp_find_unused_parameters_true"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_steps"] = {"discriminator": self.d_steps, "generator": self.g_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        steps = checkpoint.get("gan_steps", {})
        self.d_steps, self.g_steps = steps.get("discriminator", 0), steps.get("generator", 0)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self):
        opt_g = self.optimizer_g(self.net_g.parameters())
        opt_d = self.optimizer_d(self.net_d.parameters())
        if self.hparams.lr_decay == "none":
            return [opt_g, opt_d]
        g_total = self.hparams.decay_steps or self._default_decay_steps()
        d_total = g_total * self.hparams.n_critic
        # Linear decay to 0 (Gulrajani et al. 2017; Miyato et al. 2018), counted in each player's own steps.
        sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda step: max(0.0, 1.0 - step / g_total))
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lambda step: max(0.0, 1.0 - step / d_total))
        return [opt_g, opt_d], [
            {"scheduler": sched_g, "interval": "step", "name": "lr-generator"},  # LearningRateMonitor keys
            {"scheduler": sched_d, "interval": "step", "name": "lr-discriminator"},
        ]

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Cond = None, generator: paradigm.Generators = None, **options: Any
    ) -> Tensor:
        """Draw ``n`` images, (n, C, H, W) in [-1, 1], with the generator in eval mode.

        ``cond``: ``{"label": (n,)}`` (or the bare labels) for a class-conditional model (None:
        labels drawn uniformly). ``options``: ``GANSampling`` fields (``truncation``). The same
        ``generator`` seed gives the same images; ``generator`` may be one per sample.
        """
        settings = self.sampling.replace(**options)
        z = paradigm.randn((n, self.latent_dim), generator, self.device)  # (n, Z)
        if settings.truncation is not None:
            z = truncate(z, settings.truncation)
        y = sample_labels(
            n,
            self.num_classes,
            labels_of(self, cond),
            generator,
            self.device,
        )  # (n,) or None
        with paradigm.eval_mode(self.net_g):  # batch-norm running statistics, not this batch's
            x = self.net_g(z, y)  # (n, C, H, W)
        return x.clamp(-1, 1)

    def _noise(self, n: int) -> tuple[Tensor, Optional[Tensor]]:
        """Fresh z (n, Z) and uniform labels (n,) or None: this rank's slice of a world-sized draw."""
        z = paradigm.this_rank(lambda m: torch.randn(m, self.latent_dim, device=self.device), n, self.trainer)
        if self.num_classes == 0:
            return z, None
        labels = paradigm.this_rank(
            lambda m: torch.randint(0, self.num_classes, (m,), device=self.device), n, self.trainer
        )
        return z, labels  # (n, Z), (n,)

    def _took_step(self, player: Literal["g", "d"], scheduler: Any) -> bool:
        """Whether ``player``'s last ``opt.step()`` really stepped; if so, step its LR scheduler too."""
        stepped = self._stepped[player] or not self._hooks  # no hooks (outside fit): assume it did
        self._stepped[player] = False
        if stepped and scheduler is not None:
            scheduler.step()
        return stepped

    def _average_batch_norm_statistics(self) -> None:
        """Under DDP, average the batch norms' running statistics over the ranks (docstring, "DDP").

        Each rank updates them from its own batch, and DDP's ``broadcast_buffers`` overwrites every
        rank's with rank 0's at the next forward, so without this the checkpoint (rank 0 writes it)
        and ``sample()`` hold an average of rank 0's batches alone. Averaged after every optimiser
        step, the running mean follows the world batch's mean and the running variance the mean of
        the ranks' batch variances. ``SyncBatchNorm`` layers (``--trainer.sync_batchnorm true``,
        GPUs) have equal statistics on every rank already and are left alone.
        """
        if self.trainer.world_size < 2:
            return
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # not SyncBatchNorm
        stats = [
            buffer
            for m in self.modules()
            if isinstance(m, norms) and m.track_running_stats
            for buffer in (m.running_mean, m.running_var)
        ]
        if not stats:
            return
        flat = torch.cat([s.flatten() for s in stats])  # one collective for every layer
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        for s, part in zip(stats, flat.split([s.numel() for s in stats]), strict=True):
            s.copy_(part.view_as(s))

    def _loss_scale(self) -> float:
        """The AMP scaler's scale under 16-mixed (the penalties differentiate scaled outputs), else 1."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler.get_scale() if scaler is not None else 1.0

    def _evaluate(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str) -> None:
        """Held-out reals vs fakes from fixed noise: sliced Wasserstein distance and D's loss."""
        x, y = batch  # (B, C, H, W), (B,)
        y = y if self.num_classes > 0 else None  # fakes get the real labels: same class mix
        B = x.shape[0]
        first = paradigm.evaluation_index(self._trainer, batch_idx) * B
        rows = torch.arange(first, first + B, device=self.device) % self.eval_z.shape[0]  # (B,)
        fake = self.net_g(self.eval_z[rows], y)  # (B, C, H, W)
        swd = sliced_wasserstein(x, fake, self.eval_directions)
        terms = losses.discriminator_loss(self.hparams.loss, self.net_d(x, y), self.net_d(fake, y))
        self.log(f"{stage}/loss", swd, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/d_loss", terms["loss"].mean(), sync_dist=True)

    def _default_decay_steps(self) -> int:
        trainer, n = self.trainer, self.hparams.n_critic
        if trainer.max_steps > 0:
            return max(1, trainer.max_steps // (n + 1))  # global_step = d + d // n: both players' steps
        batches = trainer.estimated_stepping_batches  # max_epochs x batches per epoch: one D step each
        if math.isinf(batches):
            raise ConfigError(
                "model.lr_decay=linear needs model.decay_steps or a finite trainer.max_steps / max_epochs"
            )
        return max(1, int(batches) // n)
