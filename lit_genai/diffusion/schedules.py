"""Noise schedules of denoising diffusion and the tensors derived from them.

Implements:
    - Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM): the linear beta
      schedule, the forward process q(x_t | x0) (eq. 4) and the posterior q(x_{t-1} | x_t, x0) (eq. 6-7).
    - Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models": the cosine
      schedule (eq. 17) and the 1000/T rescaling of the linear schedule (improved-diffusion code).
    - Jabri, Fleet & Chen 2022, "Scalable Adaptive Computation for Iterative Generation" (RIN):
      the sigmoid schedule.
    - Song, Meng & Ermon 2021 (DDIM), Salimans & Ho 2022 (v-prediction) and Hang et al. 2023
      (min-SNR-gamma) use these tensors; see ``sampling.py`` and ``losses.py``.

Indexing follows the authors' code: index ``t`` in 0..T-1 holds the paper's step t+1, so
``betas[0]`` is beta_1 and ``alpha_bar[t] = prod_{s <= t} (1 - betas[s])``.

Every schedule is computed in float64; the caller casts (e.g. registers float32 buffers).

Shapes:
    B batch size, C/H/W image channels/height/width, T number of diffusion steps.
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

ScheduleName = Literal["linear", "cosine", "sigmoid"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "sigmoid")


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")


def linear_betas(num_timesteps: int) -> Tensor:
    """DDPM's linear schedule, beta from 1e-4 to 0.02, both scaled by 1000/T.

    The scaling (improved-diffusion's ``get_named_beta_schedule``) keeps alpha_bar_T about the same
    for any T as for the DDPM paper's T = 1000. It needs T > 20 (beta_T = 20/T < 1).

    Returns:
        betas (T,) float64.
    """
    _check_num_timesteps(num_timesteps)
    if num_timesteps <= 20:
        raise ConfigError(
            f"the linear schedule needs num_timesteps > 20, got {num_timesteps}: its betas are scaled by "
            "1000/T, so beta_T = 20/T must stay below 1; use the cosine or sigmoid schedule for fewer steps"
        )
    scale = 1000.0 / num_timesteps
    # DDPM sec. 4: "forward process variances ... increasing linearly from beta_1 = 1e-4 to beta_T = 0.02"
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)  # (T,)


def _betas_from_alpha_bar(
    alpha_bar_fn: Callable[[Tensor], Tensor], num_timesteps: int, max_beta: float
) -> Tensor:
    """beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), max_beta) for t = 1..T.

    ``alpha_bar_fn`` maps continuous time in [0, 1] to alpha_bar, with alpha_bar(0) = 1 up to a
    constant factor that the ratio cancels (improved-diffusion's ``betas_for_alpha_bar``).
    """
    if not 0.0 < max_beta <= 1.0:
        raise ConfigError(f"max_beta must be in (0, 1], got {max_beta}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T+1,) 0, 1/T, ..., 1
    alpha_bar = alpha_bar_fn(steps)  # (T+1,)
    # Nichol & Dhariwal eq. 17 (right): beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped to max_beta
    # "to prevent singularities at the end of the diffusion process near t = T".
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]  # (T,)
    return betas.clamp(max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2); the small offset ``s``
    keeps beta_1 from being too small near t = 0.

    Returns:
        betas (T,) float64, in (0, max_beta].
    """
    _check_num_timesteps(num_timesteps)
    if s < 0.0:
        raise ConfigError(f"cosine schedule offset s must be >= 0, got {s}")

    def alpha_bar_fn(tau: Tensor) -> Tensor:
        # Nichol & Dhariwal eq. 17 (left): f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), here with tau = t/T
        return torch.cos((tau + s) / (1.0 + s) * (math.pi / 2.0)) ** 2

    return _betas_from_alpha_bar(alpha_bar_fn, num_timesteps, max_beta)


def sigmoid_betas(
    num_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> Tensor:
    """Sigmoid schedule of Jabri et al. 2022 (RIN, Algorithm / ``sigmoid_schedule``).

    alpha_bar(t) = (sigmoid(end/tau) - sigmoid((t (end - start) + start)/tau))
                   / (sigmoid(end/tau) - sigmoid(start/tau)),  t in [0, 1];
    it falls from 1 to 0; a larger ``tau`` spends more steps at high noise.

    Returns:
        betas (T,) float64, in (0, max_beta].
    """
    _check_num_timesteps(num_timesteps)
    if not start < end:
        raise ConfigError(f"sigmoid schedule needs start < end, got start={start}, end={end}")
    if tau <= 0.0:
        raise ConfigError(f"sigmoid schedule temperature tau must be > 0, got {tau}")
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar_fn(t: Tensor) -> Tensor:
        # RIN sigmoid_schedule:
        # gamma(t) = (v_end - sigmoid((t (end - start) + start) / tau)) / (v_end - v_start)
        return (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)

    return _betas_from_alpha_bar(alpha_bar_fn, num_timesteps, max_beta)


def make_betas(name: ScheduleName, num_timesteps: int) -> Tensor:
    """The named schedule with its default parameters: betas (T,) float64."""
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    if name == "sigmoid":
        return sigmoid_betas(num_timesteps)
    raise ConfigError(f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def schedule_tensors(betas: Tensor) -> dict[str, Tensor]:
    """Every per-step quantity the losses and samplers need, from betas (T,).

    Returns:
        dict of (T,) float64 tensors (on ``betas``' device): ``betas``, ``alphas``, ``alpha_bar``,
        ``alpha_bar_prev`` (alpha_bar_{t-1}, 1 at t = 1), ``sqrt_alpha_bar``,
        ``sqrt_one_minus_alpha_bar``, ``posterior_variance`` (beta tilde), ``posterior_log_variance_clipped``,
        ``posterior_mean_coef1`` (multiplies x0), ``posterior_mean_coef2`` (multiplies x_t) and ``snr``.
    """
    if betas.ndim != 1 or betas.numel() == 0:
        raise ConfigError(f"betas must be a non-empty 1-D tensor (T,), got shape {tuple(betas.shape)}")
    betas = betas.detach().to(torch.float64)
    if not bool(((betas > 0.0) & (betas <= 1.0)).all()):
        raise ConfigError("betas must lie in (0, 1]")
    alphas = 1.0 - betas
    # DDPM sec. 2: alpha_t = 1 - beta_t, alpha_bar_t = prod_{s=1}^t alpha_s
    alpha_bar = torch.cumprod(alphas, dim=0)  # (T,)
    alpha_bar_prev = torch.cat(
        [alpha_bar.new_ones(1), alpha_bar[:-1]]
    )  # (T,) alpha_bar_{t-1}, alpha_bar_0 = 1
    # DDPM eq. 7: beta tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
    posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    # beta tilde_1 = 0: the log is clipped by taking beta tilde_2 in its place (authors' code).
    posterior_log_variance_clipped = torch.log(
        torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if betas.numel() > 1 else betas
    )  # (T,)
    # DDPM eq. 7: mu tilde_t(x_t, x0) = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0
    #                                   + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    posterior_mean_coef1 = betas * torch.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
    posterior_mean_coef2 = (1.0 - alpha_bar_prev) * torch.sqrt(alphas) / (1.0 - alpha_bar)
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bar": alpha_bar,
        "alpha_bar_prev": alpha_bar_prev,
        "sqrt_alpha_bar": torch.sqrt(alpha_bar),
        "sqrt_one_minus_alpha_bar": torch.sqrt(1.0 - alpha_bar),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_log_variance_clipped,
        "posterior_mean_coef1": posterior_mean_coef1,
        "posterior_mean_coef2": posterior_mean_coef2,
        # Signal-to-noise ratio of x_t (Kingma et al. 2021; Hang et al. 2023): alpha_bar_t / (1 - alpha_bar_t)
        "snr": alpha_bar / (1.0 - alpha_bar),
    }


def extract(a: Tensor, t: Tensor, ndim: int) -> Tensor:
    """Gather per-step values a[t] and shape them to broadcast against a ``ndim``-dim batch.

    Args:
        a: (T,) per-step values.
        t: (B,) int64 step indices in 0..T-1.
        ndim: number of dims of the tensor the result multiplies (4 for (B, C, H, W)).

    Returns:
        (B, 1, ..., 1) with ``ndim`` dims, ``a``'s dtype, on ``t``'s device.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of step indices (B,), got shape {tuple(t.shape)}")
    out = a.to(t.device)[t]  # (B,)
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))  # (B, 1, ..., 1)


def expand(value: Tensor | float, x: Tensor) -> Tensor | float:
    """A per-example value (B,) as (B, 1, ..., 1) in ``x``'s dtype and device, to broadcast against
    x (B, C, H, W); a Python float or a 0-dim tensor is returned as it is (it broadcasts already)."""
    if isinstance(value, Tensor) and value.ndim == 1:
        return value.to(x).view(-1, *([1] * (x.ndim - 1)))  # (B,) -> (B, 1, ..., 1)
    return value


def q_sample(x0: Tensor, t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """Sample x_t ~ q(x_t | x0) with the given noise.

    Args:
        x0: (B, C, H, W) data.
        t: (B,) int64 step indices.
        eps: (B, C, H, W) standard normal noise.
        alpha_bar: (T,) cumulative products of alphas.

    Returns:
        x_t (B, C, H, W) in ``x0``'s dtype.
    """
    alpha_bar_t = extract(alpha_bar, t, x0.ndim)  # (B, 1, 1, 1)
    # DDPM eq. 4: q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I), reparameterised with eps
    sqrt_ab = torch.sqrt(alpha_bar_t).to(x0.dtype)
    sqrt_one_minus_ab = torch.sqrt(1.0 - alpha_bar_t).to(x0.dtype)
    return sqrt_ab * x0 + sqrt_one_minus_ab * eps
