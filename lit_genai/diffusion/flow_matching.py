"""Flow matching with the straight (rectified-flow) path: its training maths and ODE samplers, as pure
functions.

Papers: Lipman, Chen, Ben-Hamu, Nickel & Le 2023, "Flow Matching for Generative Modeling" (the
conditional flow matching loss, eq. 9, on the optimal-transport path of sec. 4.1 with sigma_min = 0);
Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
Flow" (the same linear interpolation and velocity, eq. 1); Esser et al. 2024, "Scaling Rectified
Flow Transformers for High-Resolution Image Synthesis" (SD3: logit-normal times, sec. 3.1 eq. 19,
and the time shift of sec. 5.3.2, eq. 23).

Convention (SD3's; Lipman et al. run time the other way): t = 0 is data, t = 1 noise,

    x_t = (1 - t) x0 + t eps,  eps ~ N(0, I),        target velocity  v = dx_t/dt = eps - x0,

and the network learns v(x_t, t) = E[eps - x0 | x_t] by regression (loss ||v_theta - (eps - x0)||^2).
Samples integrate dx/dt = v from x_1 ~ N(0, I) at t = 1 down to t = 0: Euler (1st order, N NFE) or
Heun (2nd order, the trapezoidal rule, 2N NFE: the velocity is finite at t = 0, so every step is
corrected) on a uniform grid in t, or on SD3's shifted grid t' = a t / (1 + (a - 1) t).

The sigma solvers of ``solvers.py`` apply too: x_t / (1 - t) = x0 + sigma eps with sigma = t / (1 - t),
so the flow is a VE diffusion with the denoiser D(x_t / (1 - t), sigma) = x_t - t v(x_t, t)
(``flow_denoiser``). ``flow_sigma_sample`` runs one of them (DPM-Solver++(2M): ``dpm_solver++``) on the
sigmas of the same t grid. Its first step, from t = 1 (sigma = infinity), is taken in closed form: the
limit of the first-order step there is the flow's Euler step x_1 + (t_1 - 1) v(x_1, 1), which is also
where a step of DPM-Solver++(2M) from infinity lands (its history ratio r is infinite, so its second
step is first order as the solver's own first step is); the solver continues from t_1. (Euler in t
and Euler / DDIM in sigma are the same update for this path: x_s = (s / t) x_t + (1 - s / t) D.)

Network time input: t in [0, 1] is given to the network as 1000 t, the DDPM step scale of the
sinusoidal embeddings of ``nn.UNet`` and ``nn.DiT`` (a DiT needs its default ``num_timesteps: 1000``);
``flow_velocity`` wraps a network so. ``flow.py``'s ``FlowMatching`` is the LightningModule that
trains and samples with these functions.

Shape legend: B batch, C/H/W image (or latent), N number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from lit_genai.diffusion.sampling import check_shape
from lit_genai.diffusion.schedules import expand
from lit_genai.diffusion.solvers import Denoiser, dpm_solver_pp_2m_sample
from lit_genai.errors import ConfigError
from lit_genai.paradigm import Generators, randn

Velocity = Callable[[Tensor, float], Tensor]
"""(x_t (B, C, H, W), t) -> the velocity v(x_t, t) (B, C, H, W)."""

NetFn = Callable[[Tensor, Tensor], Tensor]
"""The network: (x_t (B, C, H, W), 1000 t (B,) float) -> the velocity (B, C, H, W)."""

NET_TIME_SCALE = 1000.0  # t in [0, 1] -> the networks' DDPM step scale

# ---------------------------------------------------------------------- training


def flow_interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps (Liu et al. 2023, eq. 1; Lipman et al. 2023, sec. 4.1 with sigma_min = 0,
    time reversed), t (B,) in [0, 1]: data at t = 0, noise at t = 1. (B, C, H, W)."""
    tt = expand(t, x0)  # (B,) -> (B, 1, 1, 1)
    return (1.0 - tt) * x0 + tt * eps


def flow_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The velocity of the straight path, dx_t/dt = eps - x0 (Liu et al. 2023, eq. 1). (B, C, H, W)."""
    return eps - x0


def flow_loss(v: Tensor, x0: Tensor, eps: Tensor) -> dict[str, Tensor]:
    """Per-example conditional flow matching loss ||v - (eps - x0)||^2, mean over the pixels
    (Lipman et al. 2023, eq. 9): {"loss": (B,)}."""
    return {"loss": (v - flow_target(x0, eps)).pow(2).mean(tuple(range(1, x0.ndim)))}


def flow_times(
    n: int,
    kind: Literal["uniform", "logit_normal"] = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
    *,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """(n,) training times in (0, 1): ``uniform`` (Lipman et al., Liu et al.), or ``logit_normal``
    t = sigmoid(mean + std z), z ~ N(0, 1) (SD3, sec. 3.1 eq. 19; their best: mean 0, std 1)."""
    noise_device = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=noise_device)
    elif kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=noise_device))
    else:
        raise ConfigError(
            f"unknown time sampling {kind!r}; set model.time_sampling to uniform or logit_normal"
        )
    return t.to(device if device is not None else t.device)


def flow_net_time(t: Tensor | float) -> Tensor | float:
    """The network's time input: 1000 t, the DDPM step scale of the networks' embeddings."""
    return NET_TIME_SCALE * t


def flow_velocity(model_fn: NetFn) -> Velocity:
    """The network as the velocity v(x_t, t) of the samplers below: it sees t as ``flow_net_time(t)``,
    the same for the whole batch."""

    def v(x: Tensor, t: float) -> Tensor:
        t_net = torch.full((x.shape[0],), flow_net_time(float(t)), device=x.device)  # (B,)
        return model_fn(x, t_net)  # (B, C, H, W)

    return v


# ---------------------------------------------------------------------- sampling


def flow_time_grid(steps: int, shift: float = 1.0) -> Tensor:
    """(steps + 1,) float64 times from 1 (noise) to 0 (data): uniform, then shifted by SD3's
    t' = shift t / (1 + (shift - 1) t) (Esser et al. 2024, eq. 23; shift > 1 spends more steps at
    high noise, which SD3 uses for large images: shift = sqrt(m / n) for m vs n pixels)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ConfigError(f"the time shift must be positive (1 = none), got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1.0 + (shift - 1.0) * t)


def _times(times: Tensor | Sequence[float]) -> list[float]:
    grid = torch.as_tensor(times, dtype=torch.float64).cpu().flatten().tolist()
    if len(grid) < 2 or any(b >= a for a, b in pairwise(grid)) or grid[0] > 1 or grid[-1] < 0:
        raise ConfigError(
            f"the time grid must be at least 2 decreasing values in [0, 1] (flow_time_grid), "
            f"got {grid[:4]}..."
        )
    return grid


def _start(shape: Sequence[int], noise: Optional[Tensor], generator: Generators, device) -> Tensor:
    """x_1 ~ N(0, I), the start at t = 1: ``noise``, or drawn from ``generator``."""
    check_shape(shape)
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device if device is not None else noise.device)
    return randn(shape, generator, torch.device(device) if device is not None else torch.device("cpu"))


def _ode(velocity: Velocity, shape, times, heun: bool, generator, device, noise, progress) -> Tensor:
    """Euler or Heun on dx/dt = v(x, t) from t = times[0] to times[-1]; see ``flow_euler_sample``."""
    grid = _times(times)
    x = _start(shape, noise, generator, device)  # (B, C, H, W) at t = grid[0]
    name = "Heun" if heun else "Euler"
    for t, t_next in tqdm(
        list(pairwise(grid)), desc=f"flow {name} {len(grid) - 1} steps", disable=not progress
    ):
        v = velocity(x, t).to(x.dtype)  # (B, C, H, W)
        # Euler step of dx/dt = v(x, t) from t to t_next (EDM Algorithm 1, lines 4-5, with d = v)
        x_next = x + (t_next - t) * v
        if heun:  # Heun's correction, the trapezoidal rule (as EDM Algorithm 1, lines 7-8, in t)
            x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, t_next).to(x.dtype))
        x = x_next
    return x


@torch.no_grad()
def flow_euler_sample(
    velocity: Velocity,
    shape: Sequence[int],
    times: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """Euler's method on dx/dt = v(x, t) over ``times`` (decreasing, e.g. ``flow_time_grid``); N NFE.

    Args:
        velocity: v(x, t), e.g. ``flow_velocity(net)`` or ``FlowMatching.velocity()``.
        shape: (B, C, H, W) of the samples.
        times: (N + 1,) decreasing times in [0, 1]; sampling starts from N(0, I) at times[0].
        generator: source of the starting noise (one, or one per sample).
        device: where to run (default: the CPU, or ``noise``'s device).
        noise: optional standard-normal starting noise (B, C, H, W).
        progress: show a tqdm progress bar.

    Returns:
        x at times[-1] (B, C, H, W): with a final 0, the samples.
    """
    return _ode(velocity, shape, times, False, generator, device, noise, progress)


@torch.no_grad()
def flow_heun_sample(
    velocity: Velocity,
    shape: Sequence[int],
    times: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """Heun's method (trapezoidal rule, 2nd order) on dx/dt = v(x, t); 2N NFE. Arguments as
    ``flow_euler_sample``."""
    return _ode(velocity, shape, times, True, generator, device, noise, progress)


def flow_denoiser(velocity: Velocity) -> Denoiser:
    """The flow as a VE denoiser D(x~, sigma) for ``solvers.py``: x~ = x_t / (1 - t) = x0 + sigma eps
    with sigma = t / (1 - t), so t = sigma / (1 + sigma), x_t = x~ / (1 + sigma) and the x0 estimate is
    E[x0 | x_t] = x_t - t v(x_t, t) (from x_t = (1 - t) x0 + t eps and v = eps - x0)."""

    def denoise(x: Tensor, sigma: float) -> Tensor:
        sigma = float(sigma)
        t = sigma / (1.0 + sigma)
        x_t = x / (1.0 + sigma)  # (B, C, H, W)
        return x_t - t * velocity(x_t, t).to(x.dtype)

    return denoise


@torch.no_grad()
def flow_sigma_sample(
    velocity: Velocity,
    shape: Sequence[int],
    times: Tensor | Sequence[float],
    *,
    solver: Callable[..., Tensor] = dpm_solver_pp_2m_sample,
    generator: Generators = None,
    device: Optional[torch.device] = None,
    noise: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """A sigma solver of ``solvers.py`` (default DPM-Solver++(2M)) on the flow, over the sigmas
    t / (1 - t) of ``times``; the step from t = 1 (sigma = infinity) is the flow's Euler step (see the
    module docstring). NFE: the solver's on the rest of the grid, + 1 for that step. Arguments as
    ``flow_euler_sample``; returns x_t at times[-1] (B, C, H, W)."""
    grid = _times(times)
    x = _start(shape, noise, generator, device)  # (B, C, H, W) at t = grid[0]
    if grid[0] == 1.0:
        x = x + (grid[1] - 1.0) * velocity(x, 1.0).to(x.dtype)  # the limit of the first step at sigma = inf
        grid = grid[1:]
        if len(grid) == 1:
            return x
    sigmas = [t / (1.0 - t) for t in grid]  # decreasing
    x_tilde = x / (1.0 - grid[0])  # x0 + sigma eps
    out = solver(flow_denoiser(velocity), shape, sigmas, noise=x_tilde / sigmas[0], progress=progress)
    return out * (1.0 - grid[-1])  # back to x_t (x0 when the grid ends at 0)
