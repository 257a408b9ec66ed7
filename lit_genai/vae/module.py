"""Variational autoencoders as a LightningModule: VAE, beta-VAE, conditional VAE, IWAE.

Papers: Kingma & Welling 2014 (VAE: ELBO, reparameterisation, Gaussian and Bernoulli decoders),
Higgins et al. 2017 (beta-VAE), Sohn et al. 2015 (conditional VAE), Burda et al. 2016 (IWAE: the
k-sample objective and the k = 5000 test NLL), Bowman et al. 2016 / Sonderby et al. 2016 (KL
warm-up), Kingma et al. 2016 (free bits; the discretised logistic decoder), Madry et al. 2018
(adversarial training, ``lit_genai.adversarial.attacks.pgd``).

The maths lives in ``losses.py``; the encoder ``(x, y) -> (mean, logvar)`` and the decoder
``(z, y) -> raw output`` are injected (``lit_genai.nn.vae``). The scale of a Gaussian or logistic
decoder, when learned, is a per-dimension parameter here (``log_scale``, shape ``sample_shape``),
so the networks do not depend on the likelihood.

Data as each likelihood sees it:
    - ``bernoulli``: binary pixels; grey data are binarised (``binarization``,
      ``lit_genai.data.binarize``) before the encoder, and the reported NLL is that of the binarised
      data (the usual "binarised MNIST" numbers). Training binarises with this rank's slice of a
      world-sized draw; validation and test with a generator seeded by the batch index, so the
      curves measure the model, not the dice.
    - ``gaussian``: a density on continuous data, so the 8-bit data are dequantised with uniform
      noise U(-1/255, 1/255) (Theis et al. 2016); ``nll_nats`` and ``bpd`` add the offset
      D ln 127.5 and bound the NLL of the 8-bit data (``metrics.likelihood``). ``loss``, ``rec``
      and ``neg_elbo`` are the continuous ones.
    - ``logistic``: discrete on the 256 pixel values, the NLL of the 8-bit data as it is.

The autoencoder contract (docs/architecture.md): ``encode`` (posterior mean), ``decode`` (the
decoder's mean image in [-1, 1]), ``reconstruct``, ``latent_space = "continuous"`` and
``per_example_loss`` (negative ELBO with beta = 1, one reparameterised sample from the global RNG,
on x as given: grey levels are soft Bernoulli targets, so it is differentiable w.r.t. x).

Shape legend: B batch, C/H/W image, D latent_dim, K importance (or training) samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.adversarial.attacks import pgd
from lit_genai.conditions import Cond, labels_of, sample_labels
from lit_genai.data.binarize import binarize
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.metrics.likelihood import HALF_BIN, bits_per_dim, uniform_dequantization_offset
from lit_genai.vae.checks import check_args, latent_dim
from lit_genai.vae.losses import (
    bernoulli_log_likelihood,
    chunked_iwae_bound,
    discretized_logistic_log_likelihood,
    free_bits_kl,
    gaussian_log_likelihood,
    iwae_bound,
    kl_weight,
    log_importance_weights,
    standard_normal_kl,
)

Likelihood = Literal["bernoulli", "gaussian", "logistic"]

# Evaluation settings: not stored as hyperparameters, so that `test` takes them from the command line
# (LightningCLI lets a checkpoint's hyperparameters override the command line).
EVALUATION_SETTINGS = ("val_importance_samples", "test_importance_samples", "importance_chunk_size")


@dataclass(frozen=True)
class VAESampling(paradigm.SamplingSettings):
    """Inference-time settings of a VAE (docs/architecture.md, "Sampling settings").

    Args:
        mean: Return the decoder's mean image (True) or a draw from p(x|z) (binary for
            ``bernoulli``, on the 8-bit grid for ``logistic``).
        temperature: Scale of the prior draw, z = temperature * N(0, I) (1 = the model's prior;
            below 1 trades variety for typical samples, as in Kingma & Dhariwal 2018, sec. 5).
    """

    mean: bool = True
    temperature: float = 1.0


# Learned log-scales are clamped below here (PixelCNN++'s code clamps the logistic's at -7).
MIN_LOG_SCALE = -7.0
# Initial learned decoder scale: a tenth of the data's half-range, so the reconstruction term is not
# drowned by the KL at the start (Adam moves a log-scale by about lr per step).
INIT_LOG_SCALE = math.log(0.1)


class VAE(LightningModule):
    """Variational autoencoder with a diagonal Gaussian posterior and a N(0, I) prior.

    Args:
        encoder: ``(x (B,C,H,W), y (B,) or None) -> (mean, logvar)``, each (B, D), e.g.
            ``lit_genai.nn.vae.MLPEncoder``.
        decoder: ``(z (B,D), y (B,) or None) -> (B,C,H,W)`` raw output: Bernoulli logits or the mean
            of the Gaussian / logistic; it must have a ``latent_dim`` attribute (D).
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Classes the data offer; linked from the data module. The decoder decides: with
            ``num_classes > 0`` it is a conditional VAE that samples per label.
        likelihood: p(x|z): ``bernoulli`` (binary pixels), ``gaussian`` (dequantised data) or
            ``logistic`` (discretised to the 256 pixel values); see the module docstring.
        gaussian_std: Fixed standard deviation of the Gaussian decoder (in [-1, 1] units); None =
            a learned per-dimension scale. Only for ``likelihood: gaussian``.
        binarization: For ``bernoulli`` on grey data: ``dynamic`` (a fresh draw each time, IWAE),
            ``static`` (one fixed draw per image) or ``threshold``; None for data already binary.
        beta: Weight of the KL term (beta-VAE; 1 = the ELBO).
        kl_warmup_steps: Raise the KL weight linearly from 0 to ``beta`` over this many steps.
        free_bits: Free bits lambda in nats per latent dimension (Kingma et al. 2016); 0 = off.
            ``objective: elbo`` only.
        train_samples: Samples z per example in training (the k of IWAE).
        objective: ``elbo`` (the average over the k samples of the ELBO, analytic KL) or ``iwae``
            (the k-sample importance-weighted bound; beta and the warm-up then weight
            log p(z) - log q(z|x) inside each weight).
        val_importance_samples: Log ``val/nll_nats`` and ``val/bpd`` from the IWAE bound with this
            many samples (0 = off).
        test_importance_samples: The same for ``test/nll_nats`` and ``test/bpd`` (IWAE's test
            protocol: 5000).
        importance_chunk_size: Samples decoded at once for those estimates (memory: chunk x batch
            images); the result does not depend on it.
        adversarial_eps: Adversarial training (Madry et al. 2018): PGD radius on the [-1, 1]
            scale; 0 = off. The attack maximises ``per_example_loss``.
        adversarial_norm: ``linf`` or ``l2``.
        adversarial_steps: PGD steps.
        adversarial_step_size: PGD step size; None = 2.5 * eps / steps.
        optimizer: Optimiser of all parameters (networks and learned scales).
        lr_scheduler: Optional LR scheduler.
        lr_scheduler_interval: Step the scheduler every optimisation ``step`` or every ``epoch``.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        sampling: Inference-time settings (``VAESampling``); kept out of checkpoints.
    """

    modality = "image"
    ema_target = None  # the whole module: networks and learned decoder scales
    latent_space = "continuous"
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        sample_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 0,
        likelihood: Likelihood = "bernoulli",
        gaussian_std: Optional[float] = None,
        binarization: Optional[Literal["dynamic", "static", "threshold"]] = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        train_samples: int = 1,
        objective: Literal["elbo", "iwae"] = "elbo",
        val_importance_samples: int = 0,
        test_importance_samples: int = 5000,
        importance_chunk_size: int = 100,
        adversarial_eps: float = 0.0,
        adversarial_norm: Literal["linf", "l2"] = "linf",
        adversarial_steps: int = 7,
        adversarial_step_size: Optional[float] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        seed: int = 0,
        sampling: VAESampling = VAESampling(),
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(
            self, objects=("encoder", "decoder", "optimizer", "lr_scheduler"), ignore=EVALUATION_SETTINGS
        )
        self.encoder, self.decoder = encoder, decoder
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = int(getattr(decoder, "num_classes", num_classes))  # the classes the model uses
        self.conditions = paradigm.conditions_of(self.num_classes)
        self.sampling = sampling
        self.likelihood, self.binarization = likelihood, binarization
        self.val_importance_samples = val_importance_samples
        self.test_importance_samples = test_importance_samples
        self.importance_chunk_size = importance_chunk_size
        if min(val_importance_samples, test_importance_samples) < 0:
            raise ConfigError(
                "model.val_importance_samples and test_importance_samples must be >= 0 (0 = off)"
            )
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        check_args(self.hparams)
        paradigm.check_net(encoder, "model.encoder", sample_shape=self.sample_shape, num_classes=num_classes)
        paradigm.check_net(
            decoder,
            "model.decoder",
            sample_shape=self.sample_shape,
            num_classes=num_classes,
            channels_attr="out_channels",
        )
        self.latent_dim = latent_dim(encoder, decoder)
        self.latent_shape: tuple[int, ...] = (self.latent_dim,)  # one encode() row (Autoencoder)
        self._encoder_classes = int(getattr(encoder, "num_classes", 0))
        if self._encoder_classes not in (0, self.num_classes):
            raise ConfigError(
                f"model.encoder.num_classes={self._encoder_classes} but model.decoder.num_classes="
                f"{self.num_classes}: give the decoder the classes too (a conditional VAE models p(x|z, y))"
            )
        self.num_dims = math.prod(self.sample_shape)  # D of bits/dim: C * H * W
        learned = likelihood == "logistic" or (likelihood == "gaussian" and gaussian_std is None)
        self.log_scale = nn.Parameter(torch.full(self.sample_shape, INIT_LOG_SCALE)) if learned else None
        self._checked_binary: set[str] = set()

    # ------------------------------------------------------------------ the autoencoder contract
    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, D) posterior means."""
        return self._posterior(x, y)[0]

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """(B, D) latents -> (B, C, H, W) mean images in [-1, 1]."""
        return self._mean_image(self._decoder_output(z, y))

    def reconstruct(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """decode(encode(x)): (B, C, H, W) -> (B, C, H, W) in [-1, 1]."""
        return self.decode(self.encode(x, y), y)

    def per_example_loss(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Negative ELBO (beta = 1) of x (B, C, H, W) in nats, (B,), one sample z from the global RNG.

        x is used as given (no binarisation or dequantisation; grey levels are soft Bernoulli
        targets), so the value is differentiable w.r.t. x.
        """
        eps = torch.randn((1, x.shape[0], self.latent_dim), device=x.device, dtype=x.dtype)
        terms = self._terms(x, y, eps)
        return terms["rec"] + terms["kl"]

    def prepare_inputs(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The data as the likelihood models it: binarised by ``binarization`` (a ``dynamic`` draw from
        ``generator``, default seed 0), dequantised for a Gaussian decoder, or as it is. Attacks
        (``lit_genai.adversarial``) perturb these inputs, the ones the model is trained on."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        return self._prepare(x, "test", generator)

    # ------------------------------------------------------------------ Lightning
    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> the posterior's (mean, logvar), each (B, D)."""
        return self._posterior(x, y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch  # (B, C, H, W) in [-1, 1], (B,)
        B, trainer = x.shape[0], self._trainer  # None outside a Trainer
        y = y if self.num_classes > 0 else None
        x = self._prepare(x, "train", generator=None)
        hp = self.hparams
        if hp.adversarial_eps > 0:
            step_size = hp.adversarial_step_size or 2.5 * hp.adversarial_eps / hp.adversarial_steps
            x = pgd(
                lambda v: self.per_example_loss(v, y),
                x,
                hp.adversarial_eps,
                norm=hp.adversarial_norm,
                steps=hp.adversarial_steps,
                step_size=step_size,
            )
        k = hp.train_samples
        # this rank's slice of a world-sized draw: (B, K, D) -> (K, B, D)
        eps = paradigm.this_rank(
            lambda n: torch.randn((n, k, self.latent_dim), device=x.device), B, trainer
        ).transpose(0, 1)
        terms = self._terms(x, y, eps.to(x), weights=hp.objective == "iwae")
        weight = kl_weight(self.global_step, hp.kl_warmup_steps, hp.beta)
        if hp.objective == "iwae":
            # log w = log p(x|z) + weight * (log p(z) - log q(z|x)); weight = 1: Burda et al. eq. 8
            log_w = terms["log_lik"] + weight * (terms["log_w"] - terms["log_lik"])  # (K, B)
            loss = -iwae_bound(log_w).mean()
        else:
            kl = free_bits_kl(terms["kl_per_dim"], hp.free_bits) if hp.free_bits > 0 else terms["kl"].mean()
            loss = terms["rec"].mean() + (kl if weight == 1.0 else weight * kl)
        logger_step, shown = paradigm.logged_now(self._trainer, self.global_step)
        if logger_step or shown:
            self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if logger_step:
            self.log("train/rec", terms["rec"].mean(), batch_size=B)
            self.log("train/kl", terms["kl"].mean(), batch_size=B)
            self.log("train/kl_weight", weight, batch_size=B)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def configure_optimizers(self):
        return paradigm.optimizer_config(
            self.optimizer(self.parameters()),
            self.lr_scheduler,
            interval=self.hparams.lr_scheduler_interval,
            monitor="val/loss",  # read by ReduceLROnPlateau only
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Cond = None, generator: paradigm.Generators = None, **options: Any
    ) -> Tensor:
        """Draw ``n`` images (n, C, H, W) in [-1, 1]: z ~ N(0, temperature^2 I), then the decoder.

        ``cond``: ``{"label": (n,)}`` (or the bare labels) of a conditional VAE (None: drawn
        uniformly). ``options``: ``VAESampling`` fields (``mean``, ``temperature``). The same
        ``generator`` seeds give the same images; ``generator`` may be one per sample.
        """
        settings = self.sampling.replace(**options)
        z = paradigm.randn((n, self.latent_dim), generator, self.device)  # (n, D)
        if settings.temperature != 1.0:
            z = settings.temperature * z
        y = sample_labels(
            n,
            self.num_classes,
            labels_of(self, cond),
            generator,
            self.device,
        )  # (n,) or None
        with paradigm.eval_mode(self):
            out = self._decoder_output(z, y)  # (n, C, H, W)
        if settings.mean:
            return self._mean_image(out)
        u = torch.special.ndtr(paradigm.randn((n, *self.sample_shape), generator, self.device)).to(out)
        if self.likelihood == "bernoulli":
            return torch.where(u < torch.sigmoid(out), 1.0, -1.0).to(out.dtype)
        scale = torch.as_tensor(self._log_scale()).to(out).exp()  # a fixed gaussian_std gives a float
        if self.likelihood == "gaussian":
            return (out + scale * torch.special.ndtri(u)).clamp(-1, 1)
        x = out + scale * torch.special.logit(u, eps=1e-6)  # logistic draw
        return (((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1).to(out.dtype)  # on the 8-bit grid

    # ------------------------------------------------------------------ likelihood estimates
    @torch.no_grad()
    def importance_nll(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        num_samples: int = 5000,
        generator: Optional[torch.Generator] = None,
        chunk_size: Optional[int] = None,
    ) -> Tensor:
        """-log p(x) estimated by the IWAE bound with ``num_samples`` samples (Burda et al. 2016, sec. 5.2).

        x (B, C, H, W) as the decoder models it (binary for ``bernoulli``, dequantised for
        ``gaussian``: no preparation is applied here). The samples are decoded ``chunk_size`` at a
        time (default ``importance_chunk_size``). Returns (B,) nats: an upper bound on -log p(x)
        that tightens as ``num_samples`` grows.
        """
        y = y if self.num_classes > 0 else None
        mean, logvar = self._posterior(x, y)  # (B, D) each, computed once for all chunks
        B = x.shape[0]

        def log_weights(k: int) -> Tensor:
            eps = paradigm.randn((k, B, self.latent_dim), generator, x.device).to(x)
            z = mean + torch.exp(0.5 * logvar) * eps  # (k, B, D)
            return log_importance_weights(self._log_likelihood(z, y, x), z, mean, logvar)  # (k, B)

        chunk = self.importance_chunk_size if chunk_size is None else chunk_size
        return -chunked_iwae_bound(log_weights, num_samples, chunk)

    def likelihood_protocol(self) -> dict[str, Any]:
        """What the likelihood numbers measure, for the test results (``callbacks/evaluation.py``)."""
        data = {
            "bernoulli": f"binarised ({self.binarization or 'binary data'}), D = {self.num_dims}",
            "gaussian": "dequantised with U(-1/255, 1/255); nll_nats adds D ln 127.5 (8-bit bound)",
            "logistic": "8-bit pixels, discretised logistic (256 bins, edges to +-inf)",
        }[self.likelihood]
        scale = None
        if self.likelihood != "bernoulli":
            scale = (
                "learned per dimension" if self.log_scale is not None else float(self.hparams.gaussian_std)
            )
        return {
            "likelihood": self.likelihood,
            "binarization": self.binarization,
            "data": data,
            "decoder_scale": scale,
            "nll": f"IWAE bound, k = {self.test_importance_samples}",
            "test_importance_samples": self.test_importance_samples,
            "val_importance_samples": self.val_importance_samples,
            "latent_dim": self.latent_dim,
        }

    # ------------------------------------------------------------------ internals
    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Negative ELBO (beta = 1) and, if asked, the IWAE NLL, with the binarisation, dequantisation
        and z noise drawn from a generator seeded by the batch index (distinct per rank)."""
        x, y = batch
        B = x.shape[0]
        y = y if self.num_classes > 0 else None
        generator = paradigm.evaluation_generator(self._trainer, batch_idx)
        x = self._prepare(x, stage, generator)
        terms = self._terms(x, y, paradigm.randn((1, B, self.latent_dim), generator, x.device).to(x))
        neg_elbo = (terms["rec"] + terms["kl"]).mean()
        self.log(f"{stage}/loss", neg_elbo, prog_bar=stage == "val", sync_dist=True, batch_size=B)
        self.log(f"{stage}/rec", terms["rec"].mean(), sync_dist=True, batch_size=B)
        self.log(f"{stage}/kl", terms["kl"].mean(), sync_dist=True, batch_size=B)
        if stage == "test":
            self.log("test/neg_elbo", neg_elbo, sync_dist=True, batch_size=B)
        k = self.test_importance_samples if stage == "test" else self.val_importance_samples
        if k > 0:
            nll = self.importance_nll(x, y, k, generator=generator)  # (B,)
            if self.likelihood == "gaussian":  # continuous density -> bound on the 8-bit NLL
                nll = nll + uniform_dequantization_offset(self.num_dims, 2 * HALF_BIN)
            self.log(f"{stage}/nll_nats", nll.mean(), sync_dist=True, batch_size=B)
            self.log(f"{stage}/bpd", bits_per_dim(nll, self.num_dims).mean(), sync_dist=True, batch_size=B)

    def _prepare(self, x: Tensor, stage: str, generator: Optional[torch.Generator]) -> Tensor:
        """The data as the likelihood models it (module docstring): binarised, dequantised or as is.

        ``generator`` None (training): this rank's slice of a world-sized draw from the global RNG.
        """
        if self.likelihood == "logistic":
            return x
        if self.likelihood == "bernoulli" and self.binarization is None:
            self._check_binary(x, stage)
            return x
        if self.likelihood == "bernoulli" and self.binarization != "dynamic":
            return binarize(x, self.binarization)
        if generator is None:
            u = paradigm.this_rank(
                lambda n: torch.rand((n, *x.shape[1:]), device=x.device), x.shape[0], self._trainer
            )
        else:
            u = torch.rand(x.shape, generator=generator).to(x.device)
        if self.likelihood == "bernoulli":
            return binarize(x, "dynamic", uniform=u)
        return x + (2 * u.to(x) - 1) * HALF_BIN  # gaussian: uniform dequantisation within the bin

    def _check_binary(self, x: Tensor, stage: str) -> None:
        """At the first batch of each stage: Bernoulli without binarisation needs {-1, 1} pixels."""
        if stage in self._checked_binary:
            return
        grey = (x != -1) & (x != 1)
        if bool(grey.any()):
            value = float(x[grey][0])
            raise ConfigError(
                f"likelihood 'bernoulli' needs binary pixels but the {stage} data have grey levels "
                f"(e.g. {value:.3f}): set model.init_args.binarization to dynamic, static or threshold"
            )
        self._checked_binary.add(stage)

    def _posterior(self, x: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if self._encoder_classes > 0:
            return self.encoder(x, y)
        return self.encoder(x)

    def _decoder_output(self, z: Tensor, y: Optional[Tensor]) -> Tensor:
        """(N, D) -> (N, C, H, W) raw decoder output; labels y (N,) for a conditional decoder."""
        return self.decoder(z, y) if self.num_classes > 0 else self.decoder(z)

    def _log_scale(self) -> Tensor | float:
        if self.log_scale is not None:
            return self.log_scale.clamp(min=MIN_LOG_SCALE)  # (C, H, W)
        return math.log(self.hparams.gaussian_std) if self.likelihood == "gaussian" else 0.0

    def _mean_image(self, out: Tensor) -> Tensor:
        """Raw decoder output -> the mean image in [-1, 1]: 2 sigmoid(logits) - 1, or the clamped mean."""
        if self.likelihood == "bernoulli":
            return 2 * torch.sigmoid(out) - 1
        return out.clamp(-1, 1)

    def _log_likelihood(self, z: Tensor, y: Optional[Tensor], x: Tensor) -> Tensor:
        """log p(x|z) for samples z (K, B, D) of x (B, C, H, W): (K, B)."""
        K, B = z.shape[:2]
        labels = y.repeat(K) if y is not None else None  # (K B,), matching z.flatten(0, 1)
        out = self._decoder_output(z.flatten(0, 1), labels)  # (K B, C, H, W)
        target = x if K == 1 else x.expand(K, *x.shape).reshape(K * B, *x.shape[1:])  # (K B, C, H, W)
        if self.likelihood == "bernoulli":
            log_lik = bernoulli_log_likelihood(out, (target + 1) / 2)
        elif self.likelihood == "gaussian":
            log_lik = gaussian_log_likelihood(target, out, self._log_scale())
        else:
            log_lik = discretized_logistic_log_likelihood(target, out, self._log_scale())
        return log_lik.view(K, B)

    def _terms(self, x: Tensor, y: Optional[Tensor], eps: Tensor, weights: bool = False) -> dict[str, Tensor]:
        """ELBO pieces of x (B, C, H, W) with noise eps (K, B, D).

        Returns: ``log_lik`` (K, B) log p(x|z_k); ``rec`` (B,) = -mean_k log p(x|z_k); ``kl_per_dim``
        (B, D) and ``kl`` (B,) the analytic KL(q(z|x) || p(z)); with ``weights``, ``log_w`` (K, B)
        the log importance weights log p(x|z_k) + log p(z_k) - log q(z_k|x).
        """
        mean, logvar = self._posterior(x, y)  # (B, D) each
        z = mean + torch.exp(0.5 * logvar) * eps  # (K, B, D): reparameterisation (Kingma & Welling 2.4)
        log_lik = self._log_likelihood(z, y, x)  # (K, B)
        kl_per_dim = standard_normal_kl(mean, logvar)  # (B, D)
        terms = {
            "log_lik": log_lik,
            "rec": -log_lik.mean(dim=0),
            "kl_per_dim": kl_per_dim,
            "kl": kl_per_dim.flatten(1).sum(dim=1),
        }
        if weights:
            terms["log_w"] = log_importance_weights(log_lik, z, mean, logvar)
        return terms
