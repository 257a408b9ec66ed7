"""EDM: the LightningModule of Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models".

Wiring only: the maths (the preconditioning c_skip, c_out, c_in, c_noise of EDM Table 1, the
denoiser D of eq. 7, the network's time input, the log-normal noise levels and the weighted loss of
eq. 2 and 8) is in ``preconditioning.py``; the solvers (Euler, Heun: EDM Algorithm 1, or Algorithm 2
with S_churn > 0; DPM-Solver++(2M), Lu et al. 2022) and the Karras grid (EDM eq. 5) in ``solvers.py``.

Shape legend: B batch, C/H/W image (or latent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.conditions import Cond, DropoutProbability
from lit_genai.diffusion.base import DenoisingModule
from lit_genai.diffusion.editing import sigma_stepper
from lit_genai.diffusion.preconditioning import (
    P_MEAN,
    P_STD,
    SIGMA_DATA,
    edm_add_noise,
    edm_denoiser,
    edm_loss,
    edm_net_time,
    edm_preconditioning,
    log_normal_sigmas,
)
from lit_genai.diffusion.schedules import expand
from lit_genai.diffusion.solvers import (
    Denoiser,
    dpm_solver_pp_2m_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
)
from lit_genai.errors import ConfigError

Sampler = Literal["euler", "heun", "dpm_solver++"]
SOLVERS = {"euler": euler_sample, "heun": heun_sample, "dpm_solver++": dpm_solver_pp_2m_sample}


@dataclass(frozen=True)
class EDMSampling(paradigm.SamplingSettings):
    """Inference-time settings of ``EDM`` (docs/architecture.md, "Sampling settings").

    Args:
        sampler: ``euler`` (N NFE), ``heun`` (EDM Algorithm 1 / 2, 2N - 1 NFE) or ``dpm_solver++``
            (DPM-Solver++(2M), N NFE); NFE doubled by guidance's two branches in one batch.
        steps: Number N of solver steps (EDM: 18 for CIFAR-10, 35 NFE with Heun).
        sigma_min: Smallest nonzero noise level of the grid (EDM: 0.002).
        sigma_max: Largest noise level, where sampling starts from N(0, sigma_max^2 I) (EDM: 80).
        rho: Exponent of the Karras grid (EDM eq. 5: 7).
        s_churn: EDM Algorithm 2's S_churn (``heun`` only): 0 = deterministic (Algorithm 1).
        s_tmin: Lower end of the noise levels where churn is added.
        s_tmax: Upper end of the noise levels where churn is added.
        s_noise: S_noise, the standard deviation of the added noise (EDM: slightly above 1).
        guidance_scale: Classifier-free guidance weight w (0 = plain conditional sampling).
        prompt: The caption(s) of samples drawn without a ``text`` condition (a text-conditional
            model): one string, or a list that sample i takes entry i % len of. None: the empty caption.
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

    sampler: Sampler = "heun"
    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    guidance_scale: float = 0.0
    prompt: Union[str, list[str], None] = None
    init_image: Optional[str] = None
    strength: float = 1.0
    mask: Optional[str] = None
    inpaint: Literal["replacement", "repaint"] = "replacement"
    repaint_jump: int = 10
    repaint_resample: int = 10


class EDM(DenoisingModule):
    """EDM (Karras et al. 2022): the preconditioned denoiser, log-normal noise levels, ODE samplers.

    See ``preconditioning.py`` for the maths and for the network's time input. Metrics:
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
        optimizer: Optimiser of the network's parameters (EDM: Adam).
        lr_scheduler: Optional LR scheduler, stepped every optimisation step (after the warm-up).
        warmup_steps: Linear LR warm-up over this many steps.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        autoencoder: Path of a ``KLAutoencoder`` checkpoint: denoise its scaled latents instead of
            the images (latent diffusion, Rombach et al. 2022; ``base.py``); set ``sigma_data: 1.0``.
        sampling: Inference-time settings (``EDMSampling``); kept out of checkpoints.
        text_vocabulary: The words of the data's captions (linked from the data; ``base.py``).
    """

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 0,
        sigma_data: float = SIGMA_DATA,
        p_mean: float = P_MEAN,
        p_std: float = P_STD,
        p_uncond: DropoutProbability = 0.1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        warmup_steps: int = 0,
        seed: int = 0,
        autoencoder: Optional[str] = None,
        sampling: EDMSampling = EDMSampling(),
        text_vocabulary: Optional[Sequence[str]] = None,
    ) -> None:
        if not sigma_data > 0:
            raise ConfigError(
                f"model.sigma_data={sigma_data} must be positive (EDM: 0.5 for images in [-1, 1])"
            )
        if not p_std > 0:
            raise ConfigError(f"model.p_std={p_std} must be positive (EDM: 1.2)")
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y, context = self._inputs(batch, train=True)  # labels and captions dropped for guidance
        B, trainer = x0.shape[0], self._trainer  # None when called outside a Trainer
        # sigma and noise: this rank's slice of a world-sized draw, so ranks seeded alike differ.
        hp = self.hparams
        sigma = paradigm.this_rank(
            lambda n: log_normal_sigmas(n, hp.p_mean, hp.p_std, device=x0.device), B, trainer
        )  # (B,)
        noise = paradigm.this_rank(lambda n: torch.randn((n, *x0.shape[1:]), device=x0.device), B, trainer)
        terms = self._loss_terms(x0, y, sigma.to(x0), noise.to(x0), context)
        self._log_terms("train", terms)
        return terms["loss"].mean()

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``<stage>/loss`` and ``<stage>/mse`` with sigma and noise fixed per batch index."""
        x0, y, context = self._inputs(batch, train=False)
        generator = paradigm.evaluation_generator(self._trainer, batch_idx)
        sigma = log_normal_sigmas(x0.shape[0], self.hparams.p_mean, self.hparams.p_std, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        self._log_terms(stage, self._loss_terms(x0, y, sigma.to(x0), noise.to(x0), context))

    def _loss_terms(
        self, x0: Tensor, y: Optional[Tensor], sigma: Tensor, noise: Tensor, context: Any = None
    ) -> dict[str, Tensor]:
        """EDM loss (eq. 2, weighted by eq. 8) at noise levels sigma (B,) with noise (B, C, H, W)."""
        sigma_data = self.hparams.sigma_data
        x = edm_add_noise(x0, sigma, noise)  # (B, C, H, W)
        _, _, c_in, _ = edm_preconditioning(sigma, sigma_data)  # (B,) each
        F_out = self(expand(c_in, x) * x, edm_net_time(sigma), y, context)  # (B, C, H, W)
        return edm_loss(F_out, x0, x, sigma, sigma_data)

    def denoiser(
        self, cond: Optional[Tensor] = None, guidance_scale: float = 0.0, context: Any = None
    ) -> Denoiser:
        """D(x, sigma) (EDM eq. 7) of the network, with guidance, for the solvers of ``solvers.py``."""
        return edm_denoiser(self._model_fn(cond, guidance_scale, context), self.hparams.sigma_data)

    def sigma_grid(self, steps: int, **options: Any) -> Tensor:
        """(steps + 1,) float64 Karras grid (EDM eq. 5) from sigma_max to sigma_min, then 0, with the
        sampling settings' sigma_min, sigma_max and rho (``options`` override them)."""
        settings = self.sampling.replace(**options)
        return karras_sigmas(steps, settings.sigma_min, settings.sigma_max, settings.rho)

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

        ``cond``: ``{"label": (n,)}`` (or the bare labels) for a class-conditional model (None: the
        null label). ``options``: ``EDMSampling`` fields, defaulting to ``self.sampling``.
        ``generator`` one generator, or one per sample (``paradigm.sample_generators``). With an
        ``autoencoder`` the solver draws latents, which are decoded to the images returned.
        """
        settings = self.sampling.replace(**options)
        sampler = settings.sampler
        if sampler not in SOLVERS:
            raise ConfigError(
                f"unknown sampler {sampler!r}; set model.sampling.sampler to {', '.join(SOLVERS)}"
            )
        churn = {}
        if sampler == "heun":
            churn = dict(
                s_churn=settings.s_churn,
                s_tmin=settings.s_tmin,
                s_tmax=settings.s_tmax,
                s_noise=settings.s_noise,
            )
        labels, context = self._sampling_conditions(n, cond, settings)
        edit = self._edit_inputs(n, cond, settings)
        with paradigm.eval_mode(self.net):
            if edit is not None:  # SDEdit / inpainting with this solver (editing.py)
                stepper = sigma_stepper(
                    self.denoiser(labels, settings.guidance_scale, context),
                    karras_sigmas(settings.steps, settings.sigma_min, settings.sigma_max, settings.rho),
                    sampler,
                    generator=generator,
                    **churn,
                )
                return self._edited_images(self._edit(stepper, edit, settings, generator, progress), edit)
            x = SOLVERS[sampler](
                self.denoiser(labels, settings.guidance_scale, context),
                (n, *self.net_shape),
                karras_sigmas(settings.steps, settings.sigma_min, settings.sigma_max, settings.rho),
                generator=generator,
                device=self.device,
                progress=progress,
                **churn,
            )
        return self._to_images(x)  # (n, C, H, W)
