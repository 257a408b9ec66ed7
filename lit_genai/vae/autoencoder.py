"""The KL-regularised autoencoder of latent diffusion.

Paper: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"
(LDM), sec. 3.1 and appendix G: an encoder gives a diagonal Gaussian posterior over a spatial
latent (B, c, h, w), a decoder maps latents back to images, and a slight KL penalty towards N(0, I)
(weight ~1e-6) keeps the latent space from growing arbitrarily without making it a VAE's. LDM's
perceptual (LPIPS) and patch-adversarial terms are not included here: this is the reconstruction
+ KL part only (``rec_loss`` L1 or MSE), a small first stage for small data.

The latents handed to a second stage are multiplied by ``scale_factor`` = 1 / std of the latents
(LDM's ``scale_by_std``, sec. 4.3.2 and appendix G), so a diffusion model sees unit-variance data.

Its checkpoints are read back, frozen, by ``lit_genai.pretrained.load_pretrained``.

Shape legend: B batch, C/H/W image, c/h/w latent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.pretrained import record_network_configs
from lit_genai.vae.losses import gaussian_kl

# ---------------------------------------------------------------------- the KL autoencoder


class KLAutoencoder(LightningModule):
    """LDM's KL-regularised autoencoder (reconstruction + KL; no perceptual or adversarial loss).

    Objective per example (LDM's ``LPIPSWithDiscriminator`` without its LPIPS and GAN terms, and
    with the learned output log-variance fixed at 0): rec(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)),
    z ~ q(z|x) = N(mean, exp(logvar)) by reparameterisation; rec is the L1 or squared error summed
    over the pixels and the KL summed over the latent, as in LDM (so kl_weight 1e-6 means what it
    does there).

    Scale factor (LDM's ``scale_by_std``): unless ``scale_factor`` is given, it is estimated as
    1 / std of the posterior samples of the first ``scale_batches`` validation batches at every
    validation of a fit (sanity checks excluded), so it belongs to the weights that the checkpoint
    written after that validation holds. (LDM estimates it when the second stage starts, from the
    frozen first stage; estimating it from the untrained encoder at the start of this fit would not
    describe the trained one.) It is a persistent buffer: a checkpoint keeps it, and ``test`` /
    ``predict`` or a resumed run use the saved value until a validation of further training
    re-estimates it.

    Autoencoder contract (docs/architecture.md): ``encode`` -> scaled latents (B, c, h, w),
    ``decode`` scaled latents -> images in [-1, 1], ``reconstruct``, ``per_example_loss``,
    ``latent_space = "continuous"``. Not a generative module: latent diffusion samples its latents.

    Args:
        encoder: Images (B, C, H, W) -> (B, 2c, h, w): mean and log-variance
            (``lit_genai.nn.autoencoder.Encoder`` with ``double_latent: true``).
        decoder: Latents (B, c, h, w) -> images (B, C, H, W) (``lit_genai.nn.autoencoder.Decoder``).
        sample_shape: (C, H, W) of one image; linked from the data module.
        kl_weight: Weight of the KL term (LDM: 1e-6).
        rec_loss: ``l1`` (LDM's pixel term) or ``mse``.
        scale_factor: Fixed scale of the latents handed out by ``encode`` (Stable Diffusion's
            0.18215, say); None estimates it from data (see above).
        scale_batches: Validation batches the scale factor is estimated from.
        optimizer: Optimiser of the encoder and decoder (LDM: Adam).
        lr_scheduler: Optional LR scheduler.
    """

    latent_space = "continuous"
    network_args = ("encoder", "decoder")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        kl_weight: float = 1e-6,
        rec_loss: Literal["l1", "mse"] = "l1",
        scale_factor: Optional[float] = None,
        scale_batches: int = 4,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("encoder", "decoder", "optimizer", "lr_scheduler"))
        record_network_configs(self, {"encoder": encoder, "decoder": decoder})
        self.encoder, self.decoder = encoder, decoder
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = 0  # labels are not used
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        paradigm.check_net(encoder, "model.encoder", sample_shape=self.sample_shape)
        paradigm.check_net(
            decoder, "model.decoder", sample_shape=self.sample_shape, channels_attr="out_channels"
        )
        if getattr(encoder, "double_latent", True) is False:
            raise ConfigError(
                "model.encoder.double_latent=False but the KL autoencoder needs a mean and a log-variance "
                "per latent: set model.encoder.init_args.double_latent: true"
            )
        c = getattr(encoder, "latent_channels", None)
        if c is not None and getattr(decoder, "latent_channels", c) != c:
            raise ConfigError(
                f"model.decoder.latent_channels={decoder.latent_channels} but the encoder gives {c}: "
                f"set model.decoder.init_args.latent_channels: {c}"
            )
        if scale_factor is not None and not scale_factor > 0:
            raise ConfigError(f"model.scale_factor={scale_factor} must be positive (or null to estimate it)")
        self.register_buffer(
            "scale_factor", torch.tensor(1.0 if scale_factor is None else float(scale_factor))
        )
        self._fixed_scale = scale_factor is not None
        self._scale_known = self._fixed_scale  # set or estimated in this process, or restored
        self._scale_stats: Optional[Tensor] = None  # (3,) float64: count, sum, sum of squares
        with torch.no_grad(), paradigm.eval_mode(encoder):
            latent = encoder(torch.zeros(1, *self.sample_shape))  # (1, 2c, h, w)
        self.latent_shape: tuple[int, int, int] = (latent.shape[1] // 2, *latent.shape[2:])

    # ------------------------------------------------------------------ the autoencoder contract
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> mean, log-variance (B, c, h, w) of q(z|x), unscaled; the
        log-variance is clamped to [-30, 20] as LDM's ``DiagonalGaussianDistribution``."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        *,
        sample: bool = False,
        generator: paradigm.Generators = None,
    ) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w): the posterior mean, or a
        posterior sample drawn with ``generator`` when ``sample``; times ``scale_factor``."""
        mean, logvar = self.posterior(x)
        z = mean
        if sample:
            z = mean + torch.exp(0.5 * logvar) * paradigm.randn(mean.shape, generator, mean.device).to(mean)
        return z * self.scale_factor

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, H, W) in [-1, 1]."""
        return self.decoder(z / self.scale_factor).clamp(-1, 1)

    def reconstruct(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """decode(encode(x)) with the posterior mean, (B, C, H, W) in [-1, 1]; differentiable."""
        return self.decode(self.encode(x))

    def per_example_loss(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The training objective (B,) on x in [-1, 1], one posterior sample from the global RNG."""
        mean, logvar = self.posterior(x)
        return self._terms(x, mean, logvar, torch.randn_like(mean))["loss"]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]  # (B, C, H, W) in [-1, 1]; labels (or attributes, captions) unused
        mean, logvar = self.posterior(x)
        # this rank's slice of a world-sized draw (docs/architecture.md, "Distributed")
        eps = paradigm.this_rank(
            lambda n: torch.randn((n, *mean.shape[1:]), device=mean.device), x.shape[0], self._trainer
        )
        terms = self._terms(x, mean, logvar, eps.to(mean))
        for name in ("loss", "rec", "kl"):
            self.log(f"train/{name}", terms[name].mean(), prog_bar=name == "loss", batch_size=x.shape[0])
        return terms["loss"].mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._scale_stats = None

    def on_validation_epoch_end(self) -> None:
        stats, self._scale_stats = self._scale_stats, None
        if stats is None:
            return
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        count, total, squares = stats.tolist()
        if count < 2:
            return
        variance = (squares - total * total / count) / (count - 1)  # z.flatten().std() of LDM
        if variance > 0:
            self.scale_factor.fill_(1.0 / math.sqrt(variance))
            self._scale_known = True
            self.log("val/scale_factor", self.scale_factor, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self._fixed_scale:
            self._scale_known = True  # the checkpoint's buffer is loaded right after this hook

    def on_fit_end(self) -> None:
        if not self._scale_known:
            rank_zero_warn(
                "KLAutoencoder: scale_factor was never estimated (it is, at each validation of a fit) "
                "and stays 1.0; run validation (e.g. trainer.limit_val_batches > 0) or set model.scale_factor"
            )

    def configure_optimizers(self):
        return paradigm.optimizer_config(self.optimizer(self.parameters()), self.lr_scheduler)

    # ------------------------------------------------------------------ helpers
    def _terms(self, x: Tensor, mean: Tensor, logvar: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """Per-example terms (B,) with the posterior sample z = mean + exp(logvar / 2) * eps."""
        z = mean + torch.exp(0.5 * logvar) * eps  # (B, c, h, w)
        error = self.decoder(z) - x  # (B, C, H, W)
        rec = (error.abs() if self.hparams.rec_loss == "l1" else error.pow(2)).flatten(1).sum(1)  # (B,)
        kl = gaussian_kl(mean, logvar)  # (B,) nats
        return {"loss": rec + self.hparams.kl_weight * kl, "rec": rec, "kl": kl, "z": z}

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``<stage>/loss``, ``rec``, ``kl`` with posterior noise fixed per batch index (distinct per
        rank), and ``<stage>/mse`` of the posterior-mean reconstruction (per pixel)."""
        x = batch[0]
        generator = paradigm.evaluation_generator(self._trainer, batch_idx)
        mean, logvar = self.posterior(x)
        terms = self._terms(x, mean, logvar, torch.randn(mean.shape, generator=generator).to(mean))
        for name in ("loss", "rec", "kl"):
            self.log(
                f"{stage}/{name}",
                terms[name].mean(),
                prog_bar=stage == "val" and name == "loss",
                sync_dist=True,
                batch_size=x.shape[0],
            )
        mse = (self.decoder(mean) - x).pow(2).mean()
        self.log(f"{stage}/mse", mse, sync_dist=True, batch_size=x.shape[0])
        if self._estimating_scale(stage, batch_idx):
            z = terms["z"].detach().double()
            stats = torch.stack(
                [torch.tensor(z.numel(), dtype=torch.float64, device=z.device), z.sum(), z.pow(2).sum()]
            )
            self._scale_stats = stats if self._scale_stats is None else self._scale_stats + stats

    def _estimating_scale(self, stage: str, batch_idx: int) -> bool:
        trainer = self._trainer
        return (
            stage == "val"
            and not self._fixed_scale
            and batch_idx < self.hparams.scale_batches
            and trainer is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
        )
