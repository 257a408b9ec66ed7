"""EDM: the preconditioned denoiser and training of Karras, Aittala, Aila & Laine 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", as pure functions and a LightningModule.

The data are noised as x = x0 + sigma n, n ~ N(0, I) (the VE form, EDM eq. 1 with s(t) = 1), and the
network F is wrapped into a denoiser (EDM eq. 7, Table 1 "Ours")

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
    c_in = 1 / sqrt(sigma^2 + sigma_d^2),           c_noise = ln(sigma) / 4,

trained on ln(sigma) ~ N(P_mean, P_std^2) (P_mean = -1.2, P_std = 1.2) with the weight
lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2 on ||D(x; sigma) - x0||^2
(EDM eq. 2 and 8): the network then regresses the unit-variance target (x0 - c_skip x) / c_out with
unit weight. sigma_d = 0.5 is the standard deviation of images in [-1, 1] (EDM's choice); the
unit-variance latents of an autoencoder have sigma_d = 1.

Network time input. The networks here (``nn.UNet``, ``nn.DiT``) embed a float t on the scale of
DDPM's steps, [0, 1000), with sinusoids whose fastest frequency is 1 per unit of t. EDM feeds
c_noise itself to its own networks; here it is mapped affinely onto that scale,

    t = 1000 (4 c_noise - ln 0.002) / ln(80 / 0.002) = 1000 ln(sigma / 0.002) / ln(40000),

so that EDM's sampling range sigma in [0.002, 80] spans the embedding's usual [0, 1000] (larger t is
noisier, as in DDPM; sigma outside the range gives t outside it, where the sinusoids are defined
too). It is a fixed change of the network's input, independent of the sampling settings. A DiT needs
its default ``num_timesteps: 1000`` for t to be read on this scale.

Sampling integrates the probability-flow ODE with ``solvers.py`` on the Karras grid (EDM eq. 5):
Euler, Heun (EDM Algorithm 1, or Algorithm 2 with S_churn > 0) or DPM-Solver++(2M) (Lu et al. 2022).

Shape legend: B batch, C/H/W image (or latent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.diffusion.base import DenoisingModule
from lit_genai.diffusion.solvers import (
    Denoiser,
    dpm_solver_pp_2m_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
)
from lit_genai.errors import ConfigError

Sigma = Union[Tensor, float]
"""A noise level: a Python float, or a (B,) tensor (one per example)."""

SIGMA_DATA = 0.5  # EDM: the standard deviation of images in [-1, 1]
P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1, "Training": ln(sigma) ~ N(P_mean, P_std^2)
TIME_SIGMA_MIN, TIME_SIGMA_MAX = 0.002, 80.0  # the sigma range mapped onto net times [0, 1000]

# ---------------------------------------------------------------------- pure maths


def _expand(value: Sigma, x: Tensor) -> Sigma:
    """A (B,) per-example value as (B, 1, ..., 1) to broadcast against x (B, ...); floats as they are."""
    if isinstance(value, Tensor) and value.ndim == 1:
        return value.to(x).view(-1, *([1] * (x.ndim - 1)))
    return value


def edm_preconditioning(sigma: Sigma, sigma_data: float = SIGMA_DATA) -> tuple[Sigma, Sigma, Sigma, Sigma]:
    """EDM Table 1 ("Ours", derived in appendix B.6): (c_skip, c_out, c_in, c_noise) at ``sigma``.

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, with sd = ``sigma_data``.
    Floats give floats, tensors tensors of their shape.
    """
    total = sigma**2 + sigma_data**2
    root = total**0.5
    log = torch.log(sigma) if isinstance(sigma, Tensor) else math.log(sigma)
    return sigma_data**2 / total, sigma * sigma_data / root, 1.0 / root, log / 4.0


def edm_loss_weight(sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Sigma:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (EDM Table 1, "Loss weighting",
    and eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(F_out: Tensor, x: Tensor, sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F (EDM eq. 7) from the raw network output F (B, C, H, W)."""
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    return _expand(c_skip, x) * x + _expand(c_out, x) * F_out


def edm_target(x0: Tensor, x: Tensor, sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The network's effective target (x0 - c_skip x) / c_out (EDM eq. 8), (B, C, H, W).

    For data of standard deviation sigma_data it has unit variance at every sigma.
    """
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    return (x0 - _expand(c_skip, x) * x) / _expand(c_out, x)


def edm_loss(
    F_out: Tensor, x0: Tensor, x: Tensor, sigma: Tensor, sigma_data: float = SIGMA_DATA
) -> dict[str, Tensor]:
    """Per-example EDM loss at noisy x = x0 + sigma n: {"loss": (B,), "mse": (B,)}.

    ``loss`` is lambda(sigma) ||D(x; sigma) - x0||^2 (EDM eq. 2 with the weight of eq. 8), computed
    as ||F - (x0 - c_skip x) / c_out||^2 (the same number, without dividing by c_out^2 at small
    sigma); ``mse`` the unweighted ||D - x0||^2. Both are means over the pixels.
    """
    dims = tuple(range(1, x0.ndim))
    loss = (F_out - edm_target(x0, x, sigma, sigma_data)).pow(2).mean(dims)  # (B,)
    mse = (edm_denoise(F_out, x, sigma, sigma_data) - x0).pow(2).mean(dims)  # (B,)
    return {"loss": loss, "mse": mse}


def log_normal_sigmas(
    n: int,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    *,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """(n,) training noise levels, ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1, "Noise distribution")."""
    z = torch.randn(n, generator=generator, device=generator.device if generator is not None else device)
    return (p_mean + p_std * z).exp().to(device if device is not None else z.device)


def edm_net_time(sigma: Sigma) -> Sigma:
    """The network's time input for noise level ``sigma``: c_noise = ln(sigma) / 4 mapped affinely so
    that sigma in [0.002, 80] gives t in [0, 1000], DDPM's step scale (see the module docstring)."""
    c_noise = edm_preconditioning(sigma)[3]
    return 1000.0 * (4.0 * c_noise - math.log(TIME_SIGMA_MIN)) / math.log(TIME_SIGMA_MAX / TIME_SIGMA_MIN)


# ---------------------------------------------------------------------- the module

Sampler = Literal["euler", "heun", "dpm_solver++"]
SOLVERS = {"euler": euler_sample, "heun": heun_sample, "dpm_solver++": dpm_solver_pp_2m_sample}

# Inference-time choices: not stored as hyperparameters (see ``Diffusion``'s SAMPLING_OPTIONS).
SAMPLING_OPTIONS = (
    "sampler",
    "sampling_steps",
    "sigma_min",
    "sigma_max",
    "rho",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "guidance_scale",
)


class EDM(DenoisingModule):
    """EDM (Karras et al. 2022): the preconditioned denoiser, log-normal noise levels, ODE samplers.

    See the module docstring for the maths and for the network's time input. Metrics:
    ``<stage>/loss`` (the weighted loss, which the network sees with unit weight; an untrained,
    zero-output network scores about 1 on data of standard deviation ``sigma_data``) and
    ``<stage>/mse`` (||D - x0||^2, unweighted). Validation and test draw sigma and the noise from
    the batch index, so the curve measures the model, not the dice.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6) on the network output F: D is affine in F
    with coefficients that do not depend on the label, so this is guidance on D (and on eps).

    Args:
        net: Network ``F(c_in x (B,C,H,W), t (B,) float, y (B,) or None) -> (B,C,H,W)``, e.g.
            ``lit_genai.nn.UNet``; ``t`` is ``edm_net_time(sigma)``. For class-conditional models it
            must accept ``num_classes`` as the null label used for guidance.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes the data offers; linked from the data module. The network
            decides whether they are used (``num_classes=0``: unconditional).
        sigma_data: Standard deviation of the data sigma_d (EDM: 0.5 for images in [-1, 1]; 1.0
            for the unit-variance latents of an ``autoencoder``).
        p_mean: Mean of ln(sigma) in training (EDM: -1.2).
        p_std: Standard deviation of ln(sigma) in training (EDM: 1.2).
        p_uncond: Probability of dropping the label during training (classifier-free guidance).
        sampler: ``euler`` (N NFE), ``heun`` (EDM Algorithm 1 / 2, 2N - 1 NFE) or ``dpm_solver++``
            (DPM-Solver++(2M), N NFE); NFE doubled by guidance's two branches in one batch.
        sampling_steps: Number N of solver steps (EDM: 18 for CIFAR-10, 35 NFE with Heun).
        sigma_min: Smallest nonzero noise level of the grid (EDM: 0.002).
        sigma_max: Largest noise level, where sampling starts from N(0, sigma_max^2 I) (EDM: 80).
        rho: Exponent of the Karras grid (EDM eq. 5: 7).
        s_churn: EDM Algorithm 2's S_churn (``heun`` only): 0 = deterministic (Algorithm 1).
        s_tmin: Lower end of the noise levels where churn is added.
        s_tmax: Upper end of the noise levels where churn is added.
        s_noise: S_noise, the standard deviation of the added noise (EDM: slightly above 1).
        guidance_scale: Classifier-free guidance weight w (0 = plain conditional sampling).
        optimizer: Optimiser of the network's parameters (EDM: Adam).
        lr_scheduler: Optional LR scheduler, stepped every optimisation step (after the warm-up).
        warmup_steps: Linear LR warm-up over this many steps.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        autoencoder: Path of a ``KLAutoencoder`` checkpoint: denoise its scaled latents instead of
            the images (latent diffusion, Rombach et al. 2022; ``base.py``); set ``sigma_data: 1.0``.
    """

    sampling_options = SAMPLING_OPTIONS

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 0,
        sigma_data: float = SIGMA_DATA,
        p_mean: float = P_MEAN,
        p_std: float = P_STD,
        p_uncond: float = 0.1,
        sampler: Sampler = "heun",
        sampling_steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        guidance_scale: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        warmup_steps: int = 0,
        seed: int = 0,
        autoencoder: Optional[str] = None,
    ) -> None:
        if not sigma_data > 0:
            raise ConfigError(
                f"model.sigma_data={sigma_data} must be positive (EDM: 0.5 for images in [-1, 1])"
            )
        if not p_std > 0:
            raise ConfigError(f"model.p_std={p_std} must be positive (EDM: 1.2)")
        super().__init__(
            net, sample_shape, num_classes, p_uncond, optimizer, lr_scheduler, warmup_steps, seed, autoencoder
        )
        self.sampler, self.sampling_steps, self.guidance_scale = sampler, sampling_steps, guidance_scale
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y = batch  # (B, C, H, W) in [-1, 1], (B,)
        x0 = self._encode_batch(x0)  # the latents, with an autoencoder
        B, trainer = x0.shape[0], self._trainer  # None when called outside a Trainer
        y = self._drop_labels(y)  # classifier-free guidance
        # sigma and noise: this rank's slice of a world-sized draw, so ranks seeded alike differ.
        hp = self.hparams
        sigma = paradigm.this_rank(
            lambda n: log_normal_sigmas(n, hp.p_mean, hp.p_std, device=x0.device), B, trainer
        )  # (B,)
        noise = paradigm.this_rank(lambda n: torch.randn((n, *x0.shape[1:]), device=x0.device), B, trainer)
        terms = self._loss_terms(x0, y, sigma.to(x0), noise.to(x0))
        self._log_terms("train", terms)
        return terms["loss"].mean()

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``<stage>/loss`` and ``<stage>/mse`` with sigma and noise fixed per batch index."""
        x0, y = batch
        x0 = self._encode_batch(x0)
        generator = self._evaluation_generator(batch_idx)
        sigma = log_normal_sigmas(x0.shape[0], self.hparams.p_mean, self.hparams.p_std, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        self._log_terms(stage, self._loss_terms(x0, y, sigma.to(x0), noise.to(x0)))

    def _loss_terms(self, x0: Tensor, y: Tensor, sigma: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """EDM loss (eq. 2, weighted by eq. 8) at noise levels sigma (B,) with noise (B, C, H, W)."""
        sigma_data = self.hparams.sigma_data
        x = x0 + _expand(sigma, x0) * noise  # (B, C, H, W)
        _, _, c_in, _ = edm_preconditioning(sigma, sigma_data)  # (B,) each
        F_out = self(_expand(c_in, x) * x, edm_net_time(sigma), y)  # (B, C, H, W)
        return edm_loss(F_out, x0, x, sigma, sigma_data)

    def denoiser(self, cond: Optional[Tensor] = None, guidance_scale: float = 0.0) -> Denoiser:
        """D(x, sigma) (EDM eq. 7) of the network, with guidance, for the solvers of ``solvers.py``."""
        model_fn = self._model_fn(cond, guidance_scale)
        sigma_data = self.hparams.sigma_data

        def denoise(x: Tensor, sigma: float) -> Tensor:
            sigma = float(sigma)
            _, _, c_in, _ = edm_preconditioning(sigma, sigma_data)
            t = torch.full((x.shape[0],), edm_net_time(sigma), device=x.device)  # (B,)
            return edm_denoise(model_fn(c_in * x, t).to(x.dtype), x, sigma, sigma_data)  # (B, C, H, W)

        return denoise

    def sigma_grid(self, steps: int) -> Tensor:
        """(steps + 1,) float64 Karras grid (EDM eq. 5) from sigma_max to sigma_min, then 0."""
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Optional[Tensor] = None,
        generator: paradigm.Generators = None,
        sampler: Optional[Sampler] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``n`` images, (n, C, H, W) in [-1, 1]; options default to the module's settings.

        ``cond`` (n,) class labels for a class-conditional model (None: the null label);
        ``generator`` one generator, or one per sample (``paradigm.sample_generators``). With an
        ``autoencoder`` the solver draws latents, which are decoded to the images returned.
        """
        sampler = sampler or self.sampler
        if sampler not in SOLVERS:
            raise ConfigError(f"unknown sampler {sampler!r}; set model.sampler to {', '.join(SOLVERS)}")
        guidance_scale = self.guidance_scale if guidance_scale is None else guidance_scale
        churn = {}
        if sampler == "heun":
            churn = dict(s_churn=self.s_churn, s_tmin=self.s_tmin, s_tmax=self.s_tmax, s_noise=self.s_noise)
        with paradigm.eval_mode(self.net):
            x = SOLVERS[sampler](
                self.denoiser(cond, guidance_scale),
                (n, *self.net_shape),
                self.sigma_grid(steps or self.sampling_steps),
                generator=generator,
                device=self.device,
                progress=progress,
                **churn,
            )
        return self._to_images(x)  # (n, C, H, W)
