"""Denoising diffusion as a LightningModule: training, validation loss, sampling, predict.

Papers: Ho et al. 2020 (DDPM: L_simple, ancestral sampling), Nichol & Dhariwal 2021 (cosine
schedule), Song et al. 2021 (DDIM sampling), Salimans & Ho 2022 (v-prediction), Ho & Salimans 2022
(classifier-free guidance), Hang et al. 2023 (min-SNR-gamma weighting), Karras et al. 2022 (EDM
Euler / Heun samplers on the sigma grid), Lu et al. 2022 (DPM-Solver++(2M)).

The maths lives in ``schedules.py`` / ``losses.py`` / ``sampling.py`` / ``solvers.py``; the network
is injected (``net``, any ``nn.Module`` mapping ``(x_t, t, y) -> output``). This file wires them together;
what it shares with ``EDM`` and ``FlowMatching`` (guidance, optimiser, latent space) is in ``base.py``.

Shape legend: B batch, C/H/W image, T number of diffusion steps.

Classifier-free guidance convention (Ho & Salimans 2022, eq. 6):
    eps~ = (1 + w) * eps(x_t, c) - w * eps(x_t, null)
``guidance_scale`` is w: 0 means plain conditional sampling. diffusers' ``guidance_scale`` is 1 + w.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.conditions import Cond, DropoutProbability
from lit_genai.diffusion.base import DenoisingModule
from lit_genai.diffusion.editing import Stepper, ddim_stepper, ddpm_stepper, sigma_stepper
from lit_genai.diffusion.losses import diffusion_loss, prediction_target
from lit_genai.diffusion.sampling import ddim_sample, ddpm_sample
from lit_genai.diffusion.schedules import extract, make_betas, q_sample, schedule_tensors
from lit_genai.diffusion.solvers import (
    dpm_solver_pp_2m_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
    vp_denoiser,
    vp_sigmas,
)
from lit_genai.diffusion.vlb import vlb_terms
from lit_genai.errors import ConfigError

Sampler = Literal["ddpm", "ddim", "euler", "heun", "dpm_solver++"]
SIGMA_SOLVERS = {"euler": euler_sample, "heun": heun_sample, "dpm_solver++": dpm_solver_pp_2m_sample}


@dataclass(frozen=True)
class DiffusionSampling(paradigm.SamplingSettings):
    """Inference-time settings of ``Diffusion`` (docs/architecture.md, "Sampling settings").

    Args:
        sampler: ``ddpm`` (ancestral, T steps), ``ddim``, or an ODE solver on the EDM sigma grid
            (``solvers.py``: Karras grid, rho = 7, from ``sigma_max`` down to sigma of step 0,
            then 0): ``euler``, ``heun`` (EDM Algorithm 1) or ``dpm_solver++`` (DPM-Solver++(2M)).
        steps: Number of DDIM / solver steps N (ignored by ``ddpm``). Network evaluations (NFE,
            doubled by guidance's two branches in one batch): DDIM, Euler, DPM-Solver++ N; Heun 2N - 1.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like).
        skip: DDIM timestep spacing: ``uniform`` or ``quadratic`` (DDIM's CIFAR-10 choice).
        variance: DDPM sampler variance: ``beta`` (sigma^2 = beta_t, DDPM's CIFAR-10 choice) or
            ``beta_tilde`` (the posterior variance); also the decoder variance of the bound.
        guidance_scale: Classifier-free guidance weight w (see the module docstring).
        clip_denoised: Clip the predicted x0 to [-1, 1] at every sampling step (images only: not
            done in the unbounded latent space of an ``autoencoder``).
        sigma_max: Highest noise level of the ODE solvers' grid: the smaller of this and sigma of
            step T - 1 (None: always the latter). A cosine schedule's last step (beta clipped at
            0.999) has sigma ~2e4; from there a few-step grid takes such large first steps that
            Heun's correction amplifies the denoiser's error (README, "Diffusion"). EDM's 80
            (Karras et al. 2022, Table 1) is already pure noise at the data's scale.
        prompt: The caption(s) of samples drawn without a ``text`` condition, for a text-conditional
            model (a network with a ``text_encoder``): one string, or a list that sample i takes
            entry i % len of (``predict`` writes which in ``prompts.txt``). None: the empty caption.
        init_image: Image to image: a PNG, or a folder of PNGs (sample i takes file i % len), of
            the model's size, to start from (``editing.py``); ``sample(cond={"image": x})`` gives the
            sources directly. None: plain sampling.
        strength: SDEdit's t0 (Meng et al. 2022) as a share of the sampler's steps: the source is
            noised to that level and the last round(strength * steps) steps are run; 0 returns the
            source, 1 (inpainting's choice) starts from the top of the grid.
        mask: Inpainting: a PNG (white = fill) or a named region (``left_half``, ``right_half``,
            ``top_half``, ``bottom_half``, ``center``) to fill; the other pixels are the source's,
            bit for bit. ``cond={"mask": (n, 1, H, W) bool}`` gives it directly. None: SDEdit.
        inpaint: ``replacement`` (the known part replaced by the source noised to each level, Song
            et al. 2021) or ``repaint`` (the same with RePaint's jumps back, Lugmayr et al. 2022).
        repaint_jump: RePaint's jump length j, in sampler steps (theirs: 10).
        repaint_resample: RePaint's number of resamplings r (theirs: 10); 1 is the replacement method.
    """

    sampler: Sampler = "ddim"
    steps: int = 100
    eta: float = 0.0
    skip: Literal["uniform", "quadratic"] = "uniform"
    variance: Literal["beta", "beta_tilde"] = "beta"
    guidance_scale: float = 0.0
    clip_denoised: bool = True
    sigma_max: Optional[float] = 80.0
    prompt: Union[str, list[str], None] = None
    init_image: Optional[str] = None
    strength: float = 1.0
    mask: Optional[str] = None
    inpaint: Literal["replacement", "repaint"] = "replacement"
    repaint_jump: int = 10
    repaint_resample: int = 10


class Diffusion(DenoisingModule):
    """Denoising diffusion probabilistic model (DDPM) with DDPM, DDIM and ODE-solver samplers and guidance.

    Args:
        net: Denoiser mapping ``(x_t (B,C,H,W), t (B,), y (B,) or None) -> (B,C,H,W)``, e.g.
            ``lit_genai.nn.UNet``. For class-conditional models it must accept ``num_classes`` as
            the null label used for guidance.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes the data offers; linked from the data module. The network
            decides whether they are used: a net with ``num_classes=0`` is unconditional (labels are
            ignored); one with ``num_classes > 0`` must match the data.
        num_timesteps: Number of diffusion steps T (DDPM: 1000).
        beta_schedule: Noise schedule: DDPM's ``linear``, improved DDPM's ``cosine`` or ``sigmoid``.
        prediction: What the network predicts: noise ``eps`` (DDPM), ``x0``, or ``v`` (Salimans & Ho).
        min_snr_gamma: If set, weight the loss by min-SNR-gamma (Hang et al. 2023; gamma = 5 there).
        p_uncond: Probability of dropping the label during training (classifier-free guidance).
        bpd_timesteps: Log ``val/bpd`` and ``val/nll_nats``, the variational bound on the NLL of the
            8-bit data (DDPM eq. 5, ``vlb.py``): 0 = off; k < T - 1 = unbiased estimate from k random
            steps + the exact decoder term (k + 1 network calls per batch); T = exact (T calls).
            A bound of the pixels: refused (must be 0) with an ``autoencoder``.
        test_bpd_timesteps: The same for ``test/bpd`` (on by default: ``lit-genai test`` reports
            every metric that applies; set T for the exact bound the papers report). Skipped with
            an ``autoencoder``: latents have no bound in bits per pixel.
        optimizer: Optimiser for the network's parameters.
        lr_scheduler: Optional LR scheduler, stepped every optimisation step (after the warm-up).
        warmup_steps: Linear LR warm-up over this many steps (DDPM: 5000).
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        autoencoder: Path of a ``KLAutoencoder`` checkpoint: diffuse its scaled latents instead of
            the images (latent diffusion, Rombach et al. 2022; ``base.py``). The net must fit the
            latents' shape; samples are decoded to images.
        sampling: Inference-time settings (``DiffusionSampling``); kept out of checkpoints.
        text_vocabulary: The words of the data's captions (linked from the data; ``base.py``).
    """

    evaluation_settings = ("bpd_timesteps", "test_bpd_timesteps")

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 0,
        num_timesteps: int = 1000,
        beta_schedule: Literal["linear", "cosine", "sigmoid"] = "linear",
        prediction: Literal["eps", "x0", "v"] = "eps",
        min_snr_gamma: Optional[float] = None,
        p_uncond: DropoutProbability = 0.1,
        bpd_timesteps: int = 0,
        test_bpd_timesteps: int = 50,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        warmup_steps: int = 0,
        seed: int = 0,
        autoencoder: Optional[str] = None,
        sampling: DiffusionSampling = DiffusionSampling(),
        text_vocabulary: Optional[Sequence[str]] = None,
    ) -> None:
        if autoencoder is not None and bpd_timesteps > 0:
            raise ConfigError(
                f"model.bpd_timesteps={bpd_timesteps} asks for val/bpd, a bound in pixels, but "
                "model.autoencoder makes this a model of latents: set model.bpd_timesteps: 0"
            )
        super().__init__(
            net,
            sample_shape,
            num_classes,
            p_uncond,
            optimizer,
            lr_scheduler,
            warmup_steps,
            seed,
            autoencoder,
            sampling,
            text_vocabulary,
        )
        self.bpd_timesteps, self.test_bpd_timesteps = bpd_timesteps, test_bpd_timesteps

        # Schedule in float64, kept as float32 buffers (moved with the module, not trained).
        for name, value in schedule_tensors(make_betas(beta_schedule, num_timesteps)).items():
            self.register_buffer(name, value.float(), persistent=False)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # (B, C, H, W) latents with an autoencoder, (B,) labels and the captions' context, both
        # dropped for classifier-free guidance
        x0, y, context = self._inputs(batch, train=True)
        B, trainer = x0.shape[0], self._trainer  # None when called outside a Trainer
        # t and noise: this rank's slice of a world-sized draw, so ranks seeded alike differ.
        t = paradigm.this_rank(
            lambda n: torch.randint(0, self.num_timesteps, (n,), device=x0.device), B, trainer
        )
        eps = paradigm.this_rank(lambda n: torch.randn((n, *x0.shape[1:]), device=x0.device), B, trainer)
        terms = self._loss_terms(x0, y, t, eps.to(x0), context)
        for name, value in terms.items():
            self.log(f"train/{name}", value.mean(), prog_bar=name == "loss", batch_size=B)
        return terms["loss"].mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Cond = None,
        generator: paradigm.Generators = None,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` images, (n, C, H, W) in [-1, 1].

        ``cond``: ``{"label": (n,)}`` (or the bare labels) for a class-conditional model (None:
        unconditional, i.e. the null label). ``options``: ``DiffusionSampling`` fields, defaulting
        to ``self.sampling``. The same ``generator`` seed gives the same images; ``generator`` may
        also be one generator per sample (``paradigm.sample_generators``). With an
        ``autoencoder`` the sampler draws latents, which are decoded to the images returned.
        """
        settings = self.sampling.replace(**options)
        sampler = settings.sampler
        shape = (n, *self.net_shape)
        labels, context = self._sampling_conditions(n, cond, settings)
        model_fn = self._model_fn(labels, settings.guidance_scale, context)
        clip_denoised = settings.clip_denoised and self.first_stage is None  # latents are not in [-1, 1]
        common = dict(
            prediction=self.hparams.prediction,
            clip_denoised=clip_denoised,
            generator=generator,
            device=self.device,
            progress=progress,
        )
        if sampler not in ("ddpm", "ddim", *SIGMA_SOLVERS):
            raise ConfigError(
                f"unknown sampler {sampler!r}; set model.sampling.sampler to ddpm, ddim, "
                f"{', '.join(SIGMA_SOLVERS)}"
            )
        edit = self._edit_inputs(n, cond, settings)
        with paradigm.eval_mode(self.net):
            if edit is not None:  # SDEdit / inpainting with this sampler (editing.py)
                x = self._edit(
                    self._stepper(settings, model_fn, clip_denoised, generator),
                    edit,
                    settings,
                    generator,
                    progress,
                )
            elif sampler == "ddpm":
                x = ddpm_sample(model_fn, shape, self.betas, variance=settings.variance, **common)
            elif sampler in SIGMA_SOLVERS:
                x = SIGMA_SOLVERS[sampler](
                    vp_denoiser(model_fn, self.alpha_bar, self.hparams.prediction, clip_denoised),
                    shape,
                    self.sigma_grid(settings.steps, sigma_max=settings.sigma_max),
                    generator=generator,
                    device=self.device,
                    progress=progress,
                )
            else:
                x = ddim_sample(
                    model_fn,
                    shape,
                    self.alpha_bar,
                    steps=settings.steps,
                    eta=settings.eta,
                    skip=settings.skip,
                    **common,
                )
        return self._edited_images(x, edit)  # (n, C, H, W), decoded if latent, clamped to [-1, 1]

    def _stepper(
        self, settings: DiffusionSampling, model_fn: Any, clip_denoised: bool, generator: paradigm.Generators
    ) -> Stepper:
        """The settings' sampler one step at a time, for image to image (``editing.py``)."""
        prediction = self.hparams.prediction
        if settings.sampler == "ddpm":
            return ddpm_stepper(
                model_fn,
                self.betas,
                prediction=prediction,
                variance=settings.variance,
                clip_denoised=clip_denoised,
                generator=generator,
            )
        if settings.sampler == "ddim":
            return ddim_stepper(
                model_fn,
                self.alpha_bar,
                steps=settings.steps,
                eta=settings.eta,
                skip=settings.skip,
                prediction=prediction,
                clip_denoised=clip_denoised,
                generator=generator,
            )
        return sigma_stepper(
            vp_denoiser(model_fn, self.alpha_bar, prediction, clip_denoised),
            self.sigma_grid(settings.steps, sigma_max=settings.sigma_max),
            settings.sampler,
            generator=generator,
        )

    def sigma_grid(self, steps: int, rho: float = 7.0, **options: Any) -> Tensor:
        """(steps + 1,) float64 Karras grid (EDM eq. 5) from min(sigma_max, sigma(t = T - 1)) down to
        the schedule's sigma(t = 0) (``solvers.vp_sigmas``), ending at 0; ``sigma_max`` is the
        sampling settings' (``options`` override them; None: the schedule's top)."""
        sigma_max = self.sampling.replace(**options).sigma_max
        sigmas = vp_sigmas(self.alpha_bar)  # (T,)
        top = float(sigmas[-1]) if sigma_max is None else min(float(sigmas[-1]), sigma_max)
        return karras_sigmas(steps, float(sigmas[0]), top, rho)

    @property
    def num_timesteps(self) -> int:
        return self.alpha_bar.shape[0]

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``<stage>/loss`` (and the bound, if asked) with t and noise fixed per batch index, so the
        curve measures the model, not the dice; distinct per rank, as in training."""
        x0, y, context = self._inputs(batch, train=False)  # latents with an autoencoder (no bound then)
        generator = paradigm.evaluation_generator(self._trainer, batch_idx)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        terms = self._loss_terms(x0, y, t, eps, context)
        B = x0.shape[0]  # given: Lightning cannot infer it from a batch holding captions
        self.log(f"{stage}/loss", terms["loss"].mean(), prog_bar=stage == "val", sync_dist=True, batch_size=B)
        self._log_bpd(stage, x0, y, generator=generator, context=context)

    def _loss_terms(
        self, x0: Tensor, y: Optional[Tensor], t: Tensor, eps: Tensor, context: Any = None
    ) -> dict[str, Tensor]:
        """Per-example L_simple (DDPM eq. 14) at steps t (B,) with noise eps: {"loss": (B,), "mse": (B,)}."""
        x_t = q_sample(x0, t, eps, self.alpha_bar)  # (B, C, H, W)
        out = self(x_t, t, y, context)  # (B, C, H, W)
        target = prediction_target(self.hparams.prediction, x0, eps, extract(self.alpha_bar, t, x0.ndim))
        return diffusion_loss(
            out,
            target,
            snr_t=self.snr[t],
            prediction=self.hparams.prediction,
            min_snr_gamma=self.hparams.min_snr_gamma,
        )

    def _log_bpd(
        self, stage: str, x0: Tensor, y: Optional[Tensor], generator: torch.Generator, context: Any = None
    ) -> None:
        """Log the DDPM bound as ``<stage>/bpd`` and ``<stage>/nll_nats`` if asked for that stage.

        A class-conditional model reports the conditional NLL -log p(x | y) (guidance off). A model of
        an autoencoder's latents has no such bound.
        """
        timesteps = self.test_bpd_timesteps if stage == "test" else self.bpd_timesteps
        if timesteps <= 0 or self.first_stage is not None:
            return
        bound = vlb_terms(
            self._model_fn(y, 0.0, context),
            x0,
            dict(self.named_buffers(recurse=False)),  # the schedule_tensors buffers
            self.hparams.prediction,
            variance=self.sampling.variance,
            clip_denoised=self.sampling.clip_denoised,
            timesteps=timesteps,  # >= T - 1: exact
            generator=generator,
        )
        bpd = bound["total_bpd"].mean()
        B = x0.shape[0]
        self.log(f"{stage}/bpd", bpd, sync_dist=True, batch_size=B)
        self.log(f"{stage}/nll_nats", bpd * x0[0].numel() * math.log(2.0), sync_dist=True, batch_size=B)
