"""Samplers of denoising diffusion: DDPM ancestral sampling and DDIM.

Implements:
    - Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM): ancestral
      sampling (Algorithm 2), in the form of the authors' code: predict x0, clip it to [-1, 1],
      step to the posterior mean of q(x_{t-1} | x_t, x0) (eq. 7), add sigma_t z with
      sigma_t^2 = beta_t or beta tilde_t (sec. 3.2).
    - Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models": the same loop
      for x0- and v-predicting networks (their code's ``p_mean_variance``).
    - Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (DDIM): the generalised
      update (eq. 12) with sigma from eta (eq. 16) on a sub-sequence of the steps (sec. 4.2),
      chosen as in the authors' code ("uniform" or "quadratic" skip).
    - Salimans & Ho 2022 (v-prediction): any ``Prediction`` is converted to (x0, eps) by
      ``losses.to_x0_eps``.
    - Hang et al. 2023 (min-SNR-gamma) and Jabri et al. 2022 (sigmoid schedule) are training-side;
      see ``losses.py`` and ``schedules.py``.

Both samplers are plain ``torch.no_grad`` loops. Per-step coefficients are computed in float64
on the CPU from the schedule and enter as Python floats, so the samplers work with float32
schedule buffers on any device (including ones without float64). All randomness comes from
``generator``: the same seed gives the same samples, whatever device the model runs on.

Shapes:
    B batch size, C/H/W image channels/height/width, T number of diffusion steps,
    S number of DDIM steps.
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lit_genai.diffusion.losses import Prediction, check_prediction, to_x0_eps
from lit_genai.diffusion.schedules import schedule_tensors
from lit_genai.errors import ConfigError
from lit_genai.paradigm import Generators, randn

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""(x_t (B, C, H, W), t (B,) int64) -> model output (B, C, H, W) in the sampler's ``prediction``."""


def call_model(model_fn: ModelFn, x_t: Tensor, step: int) -> Tensor:
    """model_fn(x_t, t) with t = step for the whole batch; checks and casts the output."""
    t = torch.full((x_t.shape[0],), step, dtype=torch.long, device=x_t.device)  # (B,)
    model_out = model_fn(x_t, t)  # (B, C, H, W)
    if model_out.shape != x_t.shape:
        raise ValueError(
            f"model_fn returned shape {tuple(model_out.shape)} for x_t of shape {tuple(x_t.shape)}; "
            "a diffusion model must return one value per input element"
        )
    return model_out.to(x_t.dtype)


def check_shape(shape: Sequence[int]) -> None:
    """Raise ValueError unless ``shape`` (B, C, H, W) is a non-empty sequence of positive sizes."""
    if len(shape) < 1 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive sizes (B, C, H, W), got {shape}")


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    betas: Tensor,
    *,
    prediction: Prediction = "eps",
    variance: Literal["beta", "beta_tilde"] = "beta",
    clip_denoised: bool = True,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling, DDPM Algorithm 2, one model call per step t = T..1.

    Args:
        model_fn: the network, called as ``model_fn(x_t, t)``.
        shape: (B, C, H, W) of the samples.
        betas: (T,) the training schedule (any float dtype and device).
        prediction: what ``model_fn`` predicts: "eps", "x0" or "v".
        variance: sigma_t^2 of the reverse step: "beta" (beta_t, the authors' choice for CIFAR-10)
            or "beta_tilde" (the posterior variance, DDPM eq. 7); DDPM sec. 3.2 finds both similar.
        clip_denoised: clip the predicted x0 to [-1, 1] (data range) before the posterior mean.
        generator: source of all noise (one, or one per sample); same seed -> same samples.
        device: where to run; default ``betas``' device.
        progress: show a tqdm progress bar.

    Returns:
        x0 samples (B, C, H, W) on ``device``.
    """
    check_prediction(prediction)
    if variance not in ("beta", "beta_tilde"):
        raise ConfigError(f"unknown variance {variance!r}; choose 'beta' or 'beta_tilde'")
    check_shape(shape)
    device = torch.device(device) if device is not None else betas.device
    sched = schedule_tensors(betas.detach().cpu())  # (T,) float64 each, on the CPU
    num_timesteps = sched["betas"].shape[0]
    step_variance = sched["betas"] if variance == "beta" else sched["posterior_variance"]  # (T,)

    # Algorithm 2, line 1: x_T ~ N(0, I)
    x = randn(shape, generator, device)  # (B, C, H, W)
    steps = reversed(range(num_timesteps))
    for i in tqdm(steps, total=num_timesteps, desc=f"DDPM {num_timesteps} steps", disable=not progress):
        model_out = call_model(model_fn, x, i)  # (B, C, H, W)
        alpha_bar_t = float(sched["alpha_bar"][i])
        # Predicted x0 from the network output (DDIM eq. 12 "predicted x0" for eps; Salimans & Ho for v)
        x0, _ = to_x0_eps(prediction, model_out, x, x.new_tensor(alpha_bar_t))
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        # DDPM eq. 7: mu tilde_t(x_t, x0) = coef1_t x0 + coef2_t x_t
        mean = float(sched["posterior_mean_coef1"][i]) * x0 + float(sched["posterior_mean_coef2"][i]) * x
        if i == 0:
            # Algorithm 2, line 3: z = 0 at the last step (t = 1); coef1 = 1, coef2 = 0 there, so x = x0
            x = mean
        else:
            # Algorithm 2, line 4: x_{t-1} = mu + sigma_t z, z ~ N(0, I)
            z = randn(shape, generator, device)  # (B, C, H, W)
            x = mean + math.sqrt(float(step_variance[i])) * z
    return x


def ddim_timesteps(
    num_timesteps: int, steps: int, skip: Literal["uniform", "quadratic"] = "uniform"
) -> Tensor:
    """The increasing sub-sequence tau of the T training steps that DDIM visits (DDIM sec. 4.2).

    As in the DDIM authors' code:
        "uniform": range(0, T, T // steps). This has exactly ``steps`` entries when ``steps``
            divides T; otherwise more (e.g. T=1000, steps=3 -> 0, 333, 666, 999).
        "quadratic": int((linspace(0, sqrt(0.8 T), steps))^2), their CIFAR-10 choice: dense at low
            noise. Exactly ``steps`` entries, but small t may repeat when steps > ~sqrt(0.8 T);
            a repeated step leaves x unchanged when eta = 0.

    Returns:
        (S,) int64 step indices in 0..T-1, starting at 0.
    """
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_timesteps:
        raise ConfigError(
            f"DDIM steps must be an integer in [1, {num_timesteps}] (the number of training "
            f"timesteps), got {steps!r}"
        )
    if skip == "uniform":
        return torch.arange(0, num_timesteps, num_timesteps // steps, dtype=torch.long)  # (S,)
    if skip == "quadratic":
        seq = np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2  # (S,) float64
        return torch.from_numpy(seq.astype(np.int64))  # (S,)
    raise ConfigError(f"unknown DDIM skip {skip!r}; choose 'uniform' or 'quadratic'")


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    alpha_bar: Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    skip: Literal["uniform", "quadratic"] = "uniform",
    prediction: Prediction = "eps",
    clip_denoised: bool = True,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    progress: bool = False,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) over ``ddim_timesteps(T, steps, skip)``.

    Args:
        model_fn: the network, called as ``model_fn(x_t, t)``.
        shape: (B, C, H, W) of the samples.
        alpha_bar: (T,) the training schedule's cumulative products (any float dtype and device).
        steps: number of DDIM steps (see ``ddim_timesteps`` for the exact count).
        eta: 0 for the deterministic DDIM, 1 for DDPM-like stochasticity (eq. 16); in [0, 1].
        skip: "uniform" or "quadratic" choice of the visited steps.
        prediction: what ``model_fn`` predicts: "eps", "x0" or "v".
        clip_denoised: clip the predicted x0 to [-1, 1] and recompute eps from the clipped x0.
        generator: source of all noise (one, or one per sample); same seed -> same samples.
        device: where to run; default ``alpha_bar``'s device.
        progress: show a tqdm progress bar.

    Returns:
        x0 samples (B, C, H, W) on ``device``.
    """
    check_prediction(prediction)
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"DDIM eta must be in [0, 1] (0: deterministic, 1: DDPM-like), got {eta}")
    check_shape(shape)
    device = torch.device(device) if device is not None else alpha_bar.device
    ab = alpha_bar.detach().to("cpu", torch.float64)  # (T,) coefficients in float64
    timesteps = ddim_timesteps(ab.shape[0], steps, skip).tolist()  # S ints, increasing
    prev_timesteps = [-1, *timesteps[:-1]]  # S ints; -1 stands for "alpha_bar_prev = 1" at the last step
    num_steps = len(timesteps)

    # x_T ~ N(0, I)
    x = randn(shape, generator, device)  # (B, C, H, W)
    pairs = zip(reversed(timesteps), reversed(prev_timesteps), strict=True)
    for i, j in tqdm(pairs, total=num_steps, desc=f"DDIM {num_steps} steps", disable=not progress):
        alpha_bar_t = float(ab[i])
        alpha_bar_prev = float(ab[j]) if j >= 0 else 1.0
        model_out = call_model(model_fn, x, i)  # (B, C, H, W)
        x0, eps = to_x0_eps(prediction, model_out, x, x.new_tensor(alpha_bar_t))
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            # DDPM eq. 4 solved for eps, so that (x0, eps) stay consistent with x_t
            eps = (x - math.sqrt(alpha_bar_t) * x0) / math.sqrt(1.0 - alpha_bar_t)
        # DDIM eq. 16: sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t))
        #                        * sqrt(1 - alpha_bar_t / alpha_bar_prev)
        sigma = (
            eta
            * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t))
            * math.sqrt(max(1.0 - alpha_bar_t / alpha_bar_prev, 0.0))
        )
        # DDIM eq. 12: x_prev = sqrt(alpha_bar_prev) x0   ("predicted x0")
        #                     + sqrt(1 - alpha_bar_prev - sigma^2) eps   ("direction pointing to x_t")
        #                     + sigma z   (random noise, z ~ N(0, I))
        direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
        x = math.sqrt(alpha_bar_prev) * x0 + direction
        if sigma > 0.0:
            x = x + sigma * randn(shape, generator, device)  # (B, C, H, W)
    return x
