"""Few-step ODE/SDE samplers of diffusion models in the noise-level (sigma) parameterisation.

Implements:
    - Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
      Generative Models" (EDM): the sigma grid (eq. 5), the probability-flow ODE
      dx/dsigma = (x - D(x, sigma)) / sigma (eq. 1 with sigma(t) = t, s(t) = 1, and eq. 3), its
      Euler and Heun (Algorithm 1) solvers and the stochastic sampler with "churn" (Algorithm 2).
    - Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
      Diffusion Probabilistic Models": DPM-Solver++(2M) (Algorithm 2), the multistep second-order
      solver of the data-prediction ODE in lambda = -log sigma.
    - The bridge from a discrete VP schedule (DDPM) to sigma: x = x_t / sqrt(alpha_bar_t) has
      noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (Song et al. 2021, "Denoising
      Diffusion Implicit Models", eq. 14; EDM Table 1, "VP"), and sigma is mapped back to a
      timestep by interpolating log sigma over the schedule's grid (as k-diffusion's
      ``DiscreteSchedule.sigma_to_t``).

Every sampler takes a denoiser ``D(x, sigma) -> x0 estimate`` (EDM sec. 2) and a decreasing grid
sigma_0 > ... > sigma_N (usually ending at 0), starts from x ~ N(0, sigma_0^2 I) (EDM Algorithm 1,
line 1) and returns x at sigma_N: with a final 0, the x0 samples. As in ``sampling.py``, the
per-step coefficients are Python floats computed in float64, and all noise comes from
``generator`` (one, or one per sample).

Network function evaluations (NFE) for a grid of N steps: Euler N, DPM-Solver++(2M) N, Heun
2N - 1 (no correction on a step to sigma = 0).

Shapes: B batch size, C/H/W image, T number of diffusion steps, N number of solver steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lit_genai.diffusion.losses import Prediction, check_prediction, to_x0_eps
from lit_genai.diffusion.sampling import ModelFn, call_model, check_shape
from lit_genai.errors import ConfigError
from lit_genai.paradigm import Generators, randn

Denoiser = Callable[[Tensor, float], Tensor]
"""(x (B, C, H, W) = x0 + sigma * noise, sigma) -> the x0 estimate D(x, sigma) (B, C, H, W)."""


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The EDM grid (Karras et al. 2022, eq. 5) of ``n`` steps, with sigma_N = 0 appended.

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i < n; rho = 1 is uniform in sigma, rho -> inf uniform in log sigma, and larger rho puts more
    steps at small sigma (EDM uses rho = 7).

    Returns:
        (n + 1,) float64, decreasing from sigma_max to sigma_min, then 0.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of solver steps must be a positive integer, got {n!r}")
    if not 0.0 < sigma_min <= sigma_max:
        raise ConfigError(
            f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if rho <= 0:
        raise ConfigError(f"rho must be positive (EDM: 7), got {rho}")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # (n,) EDM eq. 5
    sigmas[0] = sigma_max  # the endpoints exactly, free of the round trip through the 1/rho power
    if n > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (n + 1,)


def vp_sigmas(alpha_bar: Tensor) -> Tensor:
    """Noise levels of a discrete VP schedule: sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).

    x_t = sqrt(alpha_bar_t) (x0 + sigma_t eps) (DDIM eq. 14), so x_t / sqrt(alpha_bar_t) is the
    data plus noise of standard deviation sigma_t. Returns (T,) float64, increasing in t.
    """
    ab = alpha_bar.detach().to("cpu", torch.float64)  # (T,)
    return torch.sqrt((1.0 - ab) / ab)


def sigma_to_t(sigma: Tensor | float, sigmas: Tensor) -> Tensor:
    """The (fractional) timestep of noise level ``sigma``: log sigma interpolated linearly over the
    schedule grid (log sigma_t, t), clamped to [0, T - 1] (k-diffusion's ``sigma_to_t``).

    Args:
        sigma: noise level(s), any shape.
        sigmas: (T,) increasing noise levels of the schedule (``vp_sigmas``).

    Returns:
        float64 timesteps of ``sigma``'s shape.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64).cpu()
    grid = np.log(sigmas.detach().to("cpu", torch.float64).numpy())  # (T,)
    t = np.interp(np.log(s.numpy()).ravel(), grid, np.arange(grid.shape[0], dtype=np.float64))
    return torch.from_numpy(t).reshape(s.shape)


def t_to_sigma(t: Tensor | float, sigmas: Tensor) -> Tensor:
    """The inverse of ``sigma_to_t``: exp of log sigma interpolated at (fractional) timesteps ``t``."""
    tt = torch.as_tensor(t, dtype=torch.float64).cpu()
    grid = np.log(sigmas.detach().to("cpu", torch.float64).numpy())  # (T,)
    log_sigma = np.interp(tt.numpy().ravel(), np.arange(grid.shape[0], dtype=np.float64), grid)
    return torch.from_numpy(np.exp(log_sigma)).reshape(tt.shape)


def vp_denoiser(
    model_fn: ModelFn, alpha_bar: Tensor, prediction: Prediction = "eps", clip_denoised: bool = False
) -> Denoiser:
    """D(x, sigma) of a network trained on a discrete VP schedule (EDM Table 1, "VP"; k-diffusion's
    ``DiscreteEpsDDPMDenoiser``).

    The network sees x_t = x / sqrt(1 + sigma^2) (= sqrt(alpha_bar) x with alpha_bar = 1 / (1 + sigma^2))
    at the timestep ``sigma_to_t(sigma)`` ROUNDED to the nearest integer step (the network takes int64
    t; rounding the interpolated t picks the step nearest in log sigma). Input scaling and the
    conversion of its output to x0 (``losses.to_x0_eps``) use sigma itself, so on the schedule's own
    noise levels D is exactly the network's x0 prediction.

    Args:
        model_fn: the network, ``model_fn(x_t, t (B,) int64) -> output`` in ``prediction``.
        alpha_bar: (T,) the training schedule's cumulative products.
        prediction: what ``model_fn`` predicts: "eps", "x0" or "v".
        clip_denoised: clip the x0 estimate to the data range [-1, 1].
    """
    check_prediction(prediction)
    sigmas = vp_sigmas(alpha_bar)  # (T,)

    def denoise(x: Tensor, sigma: float) -> Tensor:
        sigma = float(sigma)
        step = int(torch.round(sigma_to_t(sigma, sigmas)))
        alpha_bar_sigma = 1.0 / (1.0 + sigma**2)
        x_t = x * math.sqrt(alpha_bar_sigma)  # (B, C, H, W), DDIM eq. 14 read backwards
        out = call_model(model_fn, x_t, step)  # (B, C, H, W)
        x0, _ = to_x0_eps(prediction, out, x_t, x_t.new_tensor(alpha_bar_sigma))
        return x0.clamp(-1.0, 1.0) if clip_denoised else x0

    return denoise


def _grid(sigmas: Tensor | Sequence[float]) -> list[float]:
    grid = torch.as_tensor(sigmas, dtype=torch.float64).cpu().flatten().tolist()  # N + 1 floats
    if len(grid) < 2 or any(b >= a for a, b in pairwise(grid)) or grid[-1] < 0:
        raise ConfigError(
            f"the sigma grid must be at least 2 decreasing values >= 0 (karras_sigmas), got {grid[:4]}..."
        )
    return grid


def _start(
    shape: Sequence[int],
    sigma_max: float,
    noise: Optional[Tensor],
    generator: Generators,
    device: Optional[torch.device],
) -> Tensor:
    """x ~ N(0, sigma_0^2 I) (EDM Algorithm 1, line 1): ``sigma_0 * noise``, noise drawn if not given."""
    check_shape(shape)
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return sigma_max * noise.to(device if device is not None else noise.device)
    return sigma_max * randn(
        shape, generator, torch.device(device) if device is not None else torch.device("cpu")
    )


def _derivative(denoiser: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with sigma(t) = t, s(t) = 1; Algorithm 1, line 4)."""
    return (x - denoiser(x, sigma).to(x.dtype)) / sigma


@torch.no_grad()
def euler_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """Euler's method on the probability-flow ODE (EDM Algorithm 1 without the correction); N NFE.

    On a grid of VP-schedule noise levels this is deterministic DDIM (EDM sec. 3; DDIM eq. 14).

    Args:
        denoiser: D(x, sigma), e.g. ``vp_denoiser(...)``.
        shape: (B, C, H, W) of the samples.
        sigmas: (N + 1,) decreasing noise levels, e.g. ``karras_sigmas`` (ends at 0 for x0 samples).
        generator: source of the starting noise (one, or one per sample).
        device: where to run (default: the CPU, or ``noise``'s device).
        noise: optional standard-normal starting noise (B, C, H, W), scaled by sigmas[0] here.
        progress: show a tqdm progress bar.

    Returns:
        x at sigmas[-1] (B, C, H, W).
    """
    grid = _grid(sigmas)
    x = _start(shape, grid[0], noise, generator, device)  # (B, C, H, W)
    for sigma, sigma_next in tqdm(
        list(pairwise(grid)), desc=f"Euler {len(grid) - 1} steps", disable=not progress
    ):
        # EDM Algorithm 1, lines 4-5: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i
        x = x + (sigma_next - sigma) * _derivative(denoiser, x, sigma)
    return x


@torch.no_grad()
def heun_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Tensor | Sequence[float],
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """EDM's Heun sampler: deterministic (Algorithm 1) with ``s_churn = 0``, else stochastic
    (Algorithm 2). 2N - 1 NFE: the step to sigma = 0 is a plain Euler step (Algorithm 1, line 6).

    Args:
        denoiser: D(x, sigma), e.g. ``vp_denoiser(...)``.
        shape: (B, C, H, W) of the samples.
        sigmas: (N + 1,) decreasing noise levels, e.g. ``karras_sigmas``.
        s_churn: total added noise S_churn; each step in [s_tmin, s_tmax] raises sigma by the factor
            1 + gamma, gamma = min(S_churn / N, sqrt(2) - 1) (Algorithm 2, line 3).
        s_tmin, s_tmax: the range of sigma where noise is added.
        s_noise: S_noise, the standard deviation of the added noise (slightly above 1 in EDM).
        generator: source of all noise (one, or one per sample); same seed -> same samples.
        device: where to run (default: the CPU, or ``noise``'s device).
        noise: optional standard-normal starting noise (B, C, H, W), scaled by sigmas[0] here.
        progress: show a tqdm progress bar.

    Returns:
        x at sigmas[-1] (B, C, H, W).
    """
    if s_churn < 0 or s_noise < 0:
        raise ConfigError(f"s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")
    grid = _grid(sigmas)
    num_steps = len(grid) - 1
    x = _start(shape, grid[0], noise, generator, device)  # (B, C, H, W)
    kind = "stochastic" if s_churn > 0 else "deterministic"
    for sigma, sigma_next in tqdm(
        list(pairwise(grid)), desc=f"Heun ({kind}) {num_steps} steps", disable=not progress
    ):
        # Algorithm 2, line 3: gamma_i = min(S_churn / N, sqrt(2) - 1) if sigma_i in [S_tmin, S_tmax]
        gamma = min(s_churn / num_steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)  # line 5: t^_i = t_i + gamma_i t_i
        if gamma > 0:
            # lines 4, 6: x^_i = x_i + sqrt(t^_i^2 - t_i^2) eps_i, eps_i ~ N(0, S_noise^2 I)
            z = randn(x.shape, generator, x.device)  # (B, C, H, W)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * z
        d = _derivative(denoiser, x, sigma_hat)  # Algorithm 1 line 4 / Algorithm 2 line 7
        x_next = x + (sigma_next - sigma_hat) * d  # Euler step (line 5 / line 8)
        if sigma_next > 0:
            # Second-order correction, trapezoidal rule (Algorithm 1 lines 7-8 / Algorithm 2 lines 10-11)
            d_next = _derivative(denoiser, x_next, sigma_next)
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


@torch.no_grad()
def dpm_solver_pp_2m_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in lambda = -log sigma; N NFE.

    In the VE form x = x_t / sqrt(alpha_bar) (alpha_t = 1, sigma_t = sigma), the data-prediction
    update of DPM-Solver++ (their eq. 9 / Algorithm 2) between sigma_i and sigma_{i+1},
    h_i = lambda_{i+1} - lambda_i = log(sigma_i / sigma_{i+1}), is
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D~_i,
    with D~_i = D_i on the first step (first order: DDIM) and on a step to sigma = 0 (h = inf), else
    the multistep estimate D~_i = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1}, r_i = h_{i-1} / h_i.

    Args:
        denoiser: D(x, sigma), e.g. ``vp_denoiser(...)``.
        shape: (B, C, H, W) of the samples.
        sigmas: (N + 1,) decreasing noise levels, e.g. ``karras_sigmas``.
        generator: source of the starting noise (one, or one per sample).
        device: where to run (default: the CPU, or ``noise``'s device).
        noise: optional standard-normal starting noise (B, C, H, W), scaled by sigmas[0] here.
        progress: show a tqdm progress bar.

    Returns:
        x at sigmas[-1] (B, C, H, W).
    """
    grid = _grid(sigmas)
    x = _start(shape, grid[0], noise, generator, device)  # (B, C, H, W)
    previous: Optional[Tensor] = None  # D_{i-1}
    h_previous = 0.0
    for sigma, sigma_next in tqdm(
        list(pairwise(grid)), desc=f"DPM-Solver++(2M) {len(grid) - 1} steps", disable=not progress
    ):
        denoised = denoiser(x, sigma).to(x.dtype)  # D_i (B, C, H, W)
        if sigma_next == 0:
            x = denoised  # h = inf: e^{-h} = 0, x_{i+1} = D_i (first order)
        else:
            h = math.log(sigma / sigma_next)  # lambda_{i+1} - lambda_i
            if previous is None:
                estimate = denoised  # first step: DPM-Solver++(1) = DDIM
            else:
                r = h_previous / h  # Algorithm 2: r_i = h_{i-1} / h_i
                estimate = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
            h_previous = h
        previous = denoised
    return x
