"""Flow matching: the LightningModule of the straight (rectified-flow) path, x_t = (1 - t) x0 + t eps
with t = 0 data and t = 1 noise, trained by velocity regression and sampled by integrating the ODE
from noise to data (Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023,
"Flow Straight and Fast"; Esser et al. 2024, SD3: logit-normal times and the time shift).

Wiring only: the maths (the path, the velocity target, the loss, the time distributions, the time
grid, the network's time input) and the samplers (Euler and Heun in t, the sigma solvers of
``solvers.py`` on the flow) are in ``flow_matching.py``.

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
from lit_genai.diffusion.editing import flow_stepper
from lit_genai.diffusion.flow_matching import (
    Velocity,
    flow_euler_sample,
    flow_heun_sample,
    flow_interpolate,
    flow_loss,
    flow_net_time,
    flow_sigma_sample,
    flow_time_grid,
    flow_times,
    flow_velocity,
)
from lit_genai.errors import ConfigError

Sampler = Literal["euler", "heun", "dpm_solver++"]
SAMPLERS = ("euler", "heun", "dpm_solver++")

# Inference-time choices: not stored as hyperparameters (see ``Diffusion``'s SAMPLING_OPTIONS).


@dataclass(frozen=True)
class FlowSampling(paradigm.SamplingSettings):
    """Inference-time settings of ``FlowMatching`` (docs/architecture.md, "Sampling settings").

    Args:
        sampler: ``euler`` (N NFE), ``heun`` (2N NFE), both in t, or ``dpm_solver++``
            (DPM-Solver++(2M) in sigma = t / (1 - t), N NFE); doubled by guidance's two branches.
        steps: Number N of steps.
        time_shift: SD3's shift of the uniform time grid (1 = none; > 1 more steps at high noise).
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

    sampler: Sampler = "euler"
    steps: int = 50
    time_shift: float = 1.0
    guidance_scale: float = 0.0
    prompt: Union[str, list[str], None] = None
    init_image: Optional[str] = None
    strength: float = 1.0
    mask: Optional[str] = None
    inpaint: Literal["replacement", "repaint"] = "replacement"
    repaint_jump: int = 10
    repaint_resample: int = 10


class FlowMatching(DenoisingModule):
    """Flow matching on the straight path (rectified flow): velocity regression, ODE sampling.

    See ``flow_matching.py`` for the maths and the network's time input. Metric: ``<stage>/loss``
    (||v - (eps - x0)||^2 per pixel; a zero-output network scores E||eps - x0||^2 = 1 + E[x0^2]).
    Validation and test draw t and the noise from the batch index.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6) on the velocity:
    v~ = (1 + w) v(x, t, c) - w v(x, t, null).

    Args:
        net: Network ``v(x_t (B,C,H,W), 1000 t (B,) float, y (B,) or None) -> (B,C,H,W)``, e.g.
            ``lit_genai.nn.UNet``. For class-conditional models it must accept ``num_classes`` as
            the null label used for guidance.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes the data offers; linked from the data module. The network
            decides whether they are used (``num_classes=0``: unconditional).
        time_sampling: Training times: ``uniform`` on [0, 1] (Lipman et al., Liu et al.) or
            ``logit_normal`` (SD3's best, with ``logit_mean`` 0 and ``logit_std`` 1).
        logit_mean: Mean m of logit(t) for ``logit_normal``.
        logit_std: Standard deviation s of logit(t) for ``logit_normal``.
        p_uncond: Probability of dropping the label during training (classifier-free guidance).
        optimizer: Optimiser of the network's parameters.
        lr_scheduler: Optional LR scheduler, stepped every optimisation step (after the warm-up).
        warmup_steps: Linear LR warm-up over this many steps.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        autoencoder: Path of a ``KLAutoencoder`` checkpoint: model its scaled latents instead of the
            images (latent flow matching, as SD3; ``base.py``).
        sampling: Inference-time settings (``FlowSampling``); kept out of checkpoints.
        text_vocabulary: The words of the data's captions (linked from the data; ``base.py``).
    """

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 0,
        time_sampling: Literal["uniform", "logit_normal"] = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        p_uncond: DropoutProbability = 0.1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        warmup_steps: int = 0,
        seed: int = 0,
        autoencoder: Optional[str] = None,
        sampling: FlowSampling = FlowSampling(),
        text_vocabulary: Optional[Sequence[str]] = None,
    ) -> None:
        if time_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(
                f"unknown model.time_sampling={time_sampling!r}; set it to uniform or logit_normal"
            )
        if not logit_std > 0:
            raise ConfigError(f"model.logit_std={logit_std} must be positive (SD3: 1.0)")
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

    def _draw_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        hp = self.hparams
        return flow_times(
            n, hp.time_sampling, hp.logit_mean, hp.logit_std, generator=generator, device=device
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y, context = self._inputs(batch, train=True)  # labels and captions dropped for guidance
        B, trainer = x0.shape[0], self._trainer  # None when called outside a Trainer
        # t and noise: this rank's slice of a world-sized draw, so ranks seeded alike differ.
        t = paradigm.this_rank(lambda n: self._draw_times(n, device=x0.device), B, trainer)  # (B,)
        eps = paradigm.this_rank(lambda n: torch.randn((n, *x0.shape[1:]), device=x0.device), B, trainer)
        terms = self._loss_terms(x0, y, t.to(x0), eps.to(x0), context)
        self._log_terms("train", terms)
        return terms["loss"].mean()

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``<stage>/loss`` with t and noise fixed per batch index."""
        x0, y, context = self._inputs(batch, train=False)
        generator = paradigm.evaluation_generator(self._trainer, batch_idx)
        t = self._draw_times(x0.shape[0], generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        self._log_terms(stage, self._loss_terms(x0, y, t.to(x0), eps.to(x0), context))

    def _loss_terms(
        self, x0: Tensor, y: Optional[Tensor], t: Tensor, eps: Tensor, context: Any = None
    ) -> dict[str, Tensor]:
        """Flow matching loss at times t (B,) with noise eps (B, C, H, W)."""
        v = self(flow_interpolate(x0, eps, t), flow_net_time(t), y, context)  # (B, C, H, W)
        return flow_loss(v, x0, eps)

    def velocity(
        self, cond: Optional[Tensor] = None, guidance_scale: float = 0.0, context: Any = None
    ) -> Velocity:
        """v(x_t, t) of the network, with guidance, for the samplers of ``flow_matching.py``."""
        return flow_velocity(self._model_fn(cond, guidance_scale, context))

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
        null label). ``options``: ``FlowSampling`` fields, defaulting to ``self.sampling``.
        ``generator`` one generator, or one per sample (``paradigm.sample_generators``). With an
        ``autoencoder`` the ODE is solved in latent space and the latents decoded.
        """
        settings = self.sampling.replace(**options)
        if settings.sampler not in SAMPLERS:
            raise ConfigError(
                f"unknown sampler {settings.sampler!r}; set model.sampling.sampler to {', '.join(SAMPLERS)}"
            )
        run = {"euler": flow_euler_sample, "heun": flow_heun_sample, "dpm_solver++": flow_sigma_sample}[
            settings.sampler
        ]
        labels, context = self._sampling_conditions(n, cond, settings)
        edit = self._edit_inputs(n, cond, settings)
        with paradigm.eval_mode(self.net):
            if edit is not None:  # SDEdit / inpainting with this sampler (editing.py)
                stepper = flow_stepper(
                    self.velocity(labels, settings.guidance_scale, context),
                    flow_time_grid(settings.steps, settings.time_shift),
                    settings.sampler,
                )
                return self._edited_images(self._edit(stepper, edit, settings, generator, progress), edit)
            x = run(
                self.velocity(labels, settings.guidance_scale, context),
                (n, *self.net_shape),
                flow_time_grid(settings.steps, settings.time_shift),
                generator=generator,
                device=self.device,
                progress=progress,
            )
        return self._to_images(x)  # (n, C, H, W)
