"""Image-to-image sampling with any sampler of a trained denoiser: SDEdit, inpainting by replacement,
RePaint. Pure functions over a sampler written as single steps.

Papers:
    - Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
      Equations" (sec. 3, Algorithm 1): perturb a source image to an intermediate noise level t0 with
      the forward process, x(t0) = alpha(t0) x_src + sigma(t0) z, and solve the reverse process from
      there. ``strength`` = t0 as a share of the sampler's steps: 0 returns the source, 1 starts at
      the top of the grid, where the source keeps the weight alpha of the noisiest level
      (sqrt(alpha_bar_T) of a discrete schedule; 0 for a flow's t = 1 or a zero-terminal-SNR schedule).
    - Song et al. 2021 ("Score-Based Generative Modeling through SDEs", sec. 5 and app. I.2), the
      replacement method of inpainting: after every step, the known pixels are replaced by the source
      noised to the new level, x = m * x_unknown + (1 - m) * (alpha x_src + sigma z), fresh z each step.
    - Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic Models"
      (Algorithm 1 and sec. 4.2): the same replacement, and resampling: after a step, diffuse back up
      ``jump`` levels with the forward process and denoise again, ``resample`` times in all, so the
      generated part harmonises with the known one. Their schedule of jumps (``repaint_schedule``,
      the authors' ``get_schedule_jump``) with ``resample = 1`` has no jump: the replacement method.

Every process here is x = a x0 + s eps at a level (a, s): a discrete VP schedule (sqrt(alpha_bar),
sqrt(1 - alpha_bar)), the VE sigma of ``solvers.py`` and EDM (1, sigma), a flow's time t (1 - t, t).
Going up from level (a1, s1) to (a2, s2) is the forward transition
x2 = (a2 / a1) x1 + sqrt(s2^2 - (a2 / a1)^2 s1^2) z (DDPM eq. 2 over several steps; RePaint eq. 8).
A sampler is a ``Stepper``: its levels (noisiest first, the data (1, 0) last) and one step between
consecutive levels; the steppers below repeat the updates of ``sampling.py``, ``solvers.py`` and
``flow_matching.py`` one step at a time, drawing their noise in the same order, so an edit whose
start keeps no source (a = 0) equals the plain sampler from the same generator.

Shape legend: B batch, C/H/W image (or latent), N sampler steps (N + 1 levels), T schedule steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from lit_genai.diffusion.flow_matching import Velocity, flow_denoiser
from lit_genai.diffusion.losses import Prediction, to_x0_eps
from lit_genai.diffusion.sampling import ModelFn, call_model, ddim_timesteps
from lit_genai.diffusion.schedules import schedule_tensors
from lit_genai.diffusion.solvers import Denoiser
from lit_genai.errors import ConfigError
from lit_genai.paradigm import Generators, randn

Level = tuple[float, float]
"""(a, s): the level where x = a x0 + s eps."""

Inpaint = Literal["replacement", "repaint"]


@dataclass
class Stepper:
    """A sampler one step at a time.

    Args:
        levels: N + 1 levels (a_k, s_k), noisiest first; the last is the data, (1, 0).
        step: x at level k (B, C, H, W) -> x at level k + 1; may draw noise from the generator.
        restart: Forget what a multistep method remembers (called after a jump back up).
    """

    levels: list[Level]
    step: Callable[[Tensor, int], Tensor]
    restart: Callable[[], None] = field(default=lambda: None)

    @property
    def num_steps(self) -> int:
        return len(self.levels) - 1


# ---------------------------------------------------------------------- the maths of an edit


def start_level(num_steps: int, strength: float) -> int:
    """The level SDEdit starts from: the last round(strength N) of the N steps are run (as diffusers'
    img2img), so strength 1 starts at level 0 (the top) and strength 0 at the data."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(
            f"model.sampling.strength={strength} must be in [0, 1] (0: the source, 1: from the top)"
        )
    return num_steps - int(round(strength * num_steps))


def noised(x0: Tensor, level: Level, eps: Tensor) -> Tensor:
    """a x0 + s eps: the forward process's marginal at ``level`` (SDEdit's x(t0)). (B, C, H, W)."""
    a, s = level
    return a * x0 + s * eps


def diffuse_up(x: Tensor, lower: Level, upper: Level, generator: Generators) -> Tensor:
    """x at ``lower`` -> a draw at the noisier ``upper`` with the forward transition (module docstring;
    RePaint eq. 8 over several steps). (B, C, H, W)."""
    ratio = upper[0] / lower[0]
    std = math.sqrt(max(upper[1] ** 2 - (ratio * lower[1]) ** 2, 0.0))
    return ratio * x + std * randn(x.shape, generator, x.device)


def repaint_schedule(num_steps: int, jump: int = 10, resample: int = 10) -> list[int]:
    """The levels RePaint visits, from 0 (the top) to ``num_steps`` (the data): the authors'
    ``get_schedule_jump`` (Lugmayr et al. 2022, sec. 4.2) in levels. With r steps left, at every
    r = 1, 1 + jump, 1 + 2 jump, ... that leaves ``jump`` levels above, the walk goes back up ``jump``
    levels and down again, ``resample - 1`` times. ``resample = 1``: 0, 1, ..., num_steps."""
    if jump < 1 or resample < 1:
        raise ConfigError(
            f"model.sampling.repaint_jump={jump} and repaint_resample={resample} must be >= 1 "
            "(RePaint: 10 and 10; repaint_resample 1 is the replacement method)"
        )
    jumps = {r: resample - 1 for r in range(1, num_steps - jump + 1, jump)}
    remaining, path = num_steps, [0]
    while remaining > 0:
        remaining -= 1
        path.append(num_steps - remaining)
        if jumps.get(remaining, 0) > 0:
            jumps[remaining] -= 1
            for _ in range(jump):
                remaining += 1
                path.append(num_steps - remaining)
    return path


@torch.no_grad()
def edit_sample(
    stepper: Stepper,
    source: Tensor,
    *,
    strength: float = 1.0,
    mask: Optional[Tensor] = None,
    inpaint: Inpaint = "replacement",
    jump: int = 10,
    resample: int = 10,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """SDEdit from ``source``, and inpainting of its ``mask`` (True where to fill), with ``stepper``.

    Args:
        stepper: the sampler, one step at a time (``ddpm_stepper``, ``ddim_stepper``,
            ``sigma_stepper``, ``flow_stepper``).
        source: (B, C, H, W) the source in the sampler's data space (images, or latents).
        strength: SDEdit's t0 as a share of the steps (``start_level``); 1 for inpainting.
        mask: (B, 1, H, W) or (B, C, H, W) bool, True where to fill; None: SDEdit of the whole image.
        inpaint: ``replacement`` (Song et al. 2021) or ``repaint`` (Lugmayr et al. 2022: jumps).
        jump, resample: RePaint's jump length j and number of resamplings r (theirs: 10, 10).
        generator: source of all noise (one, or one per sample); its first draw is the start's noise.
        progress: show a tqdm progress bar.

    Returns:
        x at the data level (B, C, H, W); where ``mask`` is False it equals ``source`` exactly.
    """
    if inpaint not in ("replacement", "repaint"):
        raise ConfigError(f"unknown model.sampling.inpaint={inpaint!r}; set it to replacement or repaint")
    levels, first = stepper.levels, start_level(stepper.num_steps, strength)
    eps = randn(source.shape, generator, source.device)  # the first draw, as every sampler's x_T
    x = noised(source, levels[first], eps)  # SDEdit's x(t0) (Meng et al. 2022, Algorithm 1)
    if mask is not None and inpaint == "repaint":
        path = [first + k for k in repaint_schedule(stepper.num_steps - first, jump, resample)]
    else:
        path = list(range(first, stepper.num_steps + 1))
    for here, there in tqdm(list(pairwise(path)), desc="image to image", disable=not progress):
        if there < here:  # RePaint: back up to a noisier level, then denoise again from there
            x = diffuse_up(x, levels[here], levels[there], generator)
            stepper.restart()
            continue
        x = stepper.step(x, here)
        if mask is not None:  # the known part, noised to the new level (replacement; RePaint line 5)
            a, s = levels[there]
            known = (
                source if s == 0 else noised(source, (a, s), randn(source.shape, generator, source.device))
            )
            x = torch.where(mask, x, known)
    return x


# ---------------------------------------------------------------------- samplers as steppers


def vp_levels(alpha_bar: Sequence[float]) -> list[Level]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) of each step, then the data (1, 0)."""
    return [(math.sqrt(ab), math.sqrt(1.0 - ab)) for ab in alpha_bar] + [(1.0, 0.0)]


def ddpm_stepper(
    model_fn: ModelFn,
    betas: Tensor,
    *,
    prediction: Prediction = "eps",
    variance: Literal["beta", "beta_tilde"] = "beta",
    clip_denoised: bool = True,
    generator: Generators = None,
) -> Stepper:
    """``sampling.ddpm_sample`` one step at a time: level k is step t = T - 1 - k (DDPM Algorithm 2)."""
    sched = schedule_tensors(betas.detach().cpu())  # (T,) float64 each
    T = sched["betas"].shape[0]
    step_variance = sched["betas"] if variance == "beta" else sched["posterior_variance"]  # (T,)

    def step(x: Tensor, k: int) -> Tensor:
        i = T - 1 - k
        model_out = call_model(model_fn, x, i)  # (B, C, H, W)
        x0, _ = to_x0_eps(prediction, model_out, x, x.new_tensor(float(sched["alpha_bar"][i])))
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        # DDPM eq. 7: the posterior mean; Algorithm 2, line 4: + sigma_t z except at the last step
        mean = float(sched["posterior_mean_coef1"][i]) * x0 + float(sched["posterior_mean_coef2"][i]) * x
        if i == 0:
            return mean
        return mean + math.sqrt(float(step_variance[i])) * randn(x.shape, generator, x.device)

    return Stepper(vp_levels(sched["alpha_bar"].flip(0).tolist()), step)


def ddim_stepper(
    model_fn: ModelFn,
    alpha_bar: Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    skip: Literal["uniform", "quadratic"] = "uniform",
    prediction: Prediction = "eps",
    clip_denoised: bool = True,
    generator: Generators = None,
) -> Stepper:
    """``sampling.ddim_sample`` one step at a time (DDIM eq. 12 and 16) over its visited steps."""
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"DDIM eta must be in [0, 1] (0: deterministic, 1: DDPM-like), got {eta}")
    ab = alpha_bar.detach().to("cpu", torch.float64)  # (T,)
    visited = ddim_timesteps(ab.shape[0], steps, skip).tolist()[::-1]  # S ints, decreasing
    previous = [*visited[1:], -1]  # -1: alpha_bar_prev = 1 at the last step

    def step(x: Tensor, k: int) -> Tensor:
        i, j = visited[k], previous[k]
        alpha_bar_t, alpha_bar_prev = float(ab[i]), float(ab[j]) if j >= 0 else 1.0
        x0, eps = to_x0_eps(prediction, call_model(model_fn, x, i), x, x.new_tensor(alpha_bar_t))
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(alpha_bar_t) * x0) / math.sqrt(1.0 - alpha_bar_t)
        sigma = (
            eta
            * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t))
            * math.sqrt(max(1.0 - alpha_bar_t / alpha_bar_prev, 0.0))
        )  # DDIM eq. 16
        direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
        x = math.sqrt(alpha_bar_prev) * x0 + direction  # DDIM eq. 12
        if sigma > 0.0:
            x = x + sigma * randn(x.shape, generator, x.device)
        return x

    return Stepper(vp_levels([float(ab[i]) for i in visited]), step)


class _SigmaSteps:
    """The state of ``sigma_stepper``: DPM-Solver++(2M)'s previous denoised estimate and step."""

    def __init__(self) -> None:
        self.previous: Optional[Tensor] = None
        self.h_previous = 0.0

    def restart(self) -> None:
        self.previous, self.h_previous = None, 0.0


def sigma_stepper(
    denoiser: Denoiser,
    sigmas: Tensor | Sequence[float],
    solver: Literal["euler", "heun", "dpm_solver++"],
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: Generators = None,
) -> Stepper:
    """A solver of ``solvers.py`` one step at a time on the grid ``sigmas`` (levels (1, sigma)):
    Euler, Heun (EDM Algorithm 1, or 2 with ``s_churn``) or DPM-Solver++(2M), whose history restarts
    (a first-order step) after a jump back up."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64).cpu().flatten().tolist()  # N + 1 floats
    num_steps, state = len(grid) - 1, _SigmaSteps()

    def derivative(x: Tensor, sigma: float) -> Tensor:
        return (x - denoiser(x, sigma).to(x.dtype)) / sigma  # EDM eq. 3

    def step(x: Tensor, k: int) -> Tensor:
        sigma, sigma_next = grid[k], grid[k + 1]
        if solver == "euler":
            return x + (sigma_next - sigma) * derivative(x, sigma)  # EDM Algorithm 1, lines 4-5
        if solver == "heun":
            gamma = min(s_churn / num_steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
            sigma_hat = sigma * (1.0 + gamma)  # EDM Algorithm 2, lines 3-6
            if gamma > 0:
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn(x.shape, generator, x.device)
            d = derivative(x, sigma_hat)
            x_next = x + (sigma_next - sigma_hat) * d
            if sigma_next > 0:  # the trapezoidal correction (Algorithm 1, lines 7-8)
                x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + derivative(x_next, sigma_next))
            return x_next
        denoised = denoiser(x, sigma).to(x.dtype)  # DPM-Solver++(2M), Lu et al. 2022 Algorithm 2
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            estimate = denoised
            if state.previous is not None:
                r = state.h_previous / h
                estimate = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * state.previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
            state.h_previous = h
        state.previous = denoised
        return x

    if solver not in ("euler", "heun", "dpm_solver++"):
        raise ConfigError(f"unknown solver {solver!r}; choose euler, heun or dpm_solver++")
    return Stepper([(1.0, s) for s in grid], step, state.restart)


def flow_stepper(
    velocity: Velocity, times: Tensor | Sequence[float], solver: Literal["euler", "heun", "dpm_solver++"]
) -> Stepper:
    """A sampler of ``flow_matching.py`` one step at a time on the times ``times`` (levels (1 - t, t)):
    Euler or Heun in t, or DPM-Solver++(2M) in sigma = t / (1 - t), whose step from t = 1 is the
    flow's Euler step (``flow_sigma_sample``)."""
    grid = torch.as_tensor(times, dtype=torch.float64).cpu().flatten().tolist()  # N + 1 floats
    sigma_steps = None
    if solver == "dpm_solver++":
        sigmas = [t / (1.0 - t) if t < 1.0 else math.inf for t in grid]
        sigma_steps = sigma_stepper(flow_denoiser(velocity), [s for s in sigmas if s < math.inf], solver)
        offset = len(grid) - sigma_steps.num_steps - 1  # 1 when the grid starts at t = 1
    elif solver not in ("euler", "heun"):
        raise ConfigError(f"unknown flow sampler {solver!r}; choose euler, heun or dpm_solver++")

    def step(x: Tensor, k: int) -> Tensor:
        t, t_next = grid[k], grid[k + 1]
        if sigma_steps is not None and k >= offset:  # in x~ = x_t / (1 - t) = x0 + sigma eps
            x_tilde = sigma_steps.step(x / (1.0 - t), k - offset)
            return x_tilde * (1.0 - t_next)
        v = velocity(x, t).to(x.dtype)
        x_next = x + (t_next - t) * v  # Euler in t
        if solver == "heun":
            x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, t_next).to(x.dtype))
        return x_next

    restart = sigma_steps.restart if sigma_steps is not None else (lambda: None)
    return Stepper([(1.0 - t, t) for t in grid], step, restart)
