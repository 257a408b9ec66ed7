"""EDM / DPM-Solver++ samplers: the Karras grid, the VP sigma mapping, exactness on a Gaussian toy
whose denoiser and probability-flow ODE are known in closed form, convergence orders, and the
module's ``sample()`` with each solver."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lit_genai.diffusion import Diffusion, DiffusionSampling
from lit_genai.diffusion.sampling import ddim_sample, ddim_timesteps
from lit_genai.diffusion.schedules import make_betas, schedule_tensors
from lit_genai.diffusion.solvers import (
    dpm_solver_pp_2m_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
    sigma_to_t,
    t_to_sigma,
    vp_denoiser,
    vp_sigmas,
)
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet

MU, S = 0.3, 0.5  # toy data ~ N(MU, S^2)
SOLVERS = {"euler": euler_sample, "heun": heun_sample, "dpm_solver++": dpm_solver_pp_2m_sample}
NFE = {"euler": lambda n: n, "heun": lambda n: 2 * n - 1, "dpm_solver++": lambda n: n}
ORDER = {"euler": 1.0, "heun": 2.0, "dpm_solver++": 2.0}


def gaussian_denoiser(x, sigma):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MU, S^2): (S^2 x + sigma^2 MU) / (S^2 + sigma^2)."""
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def exact_flow(x_start, sigma_start, sigma):
    """The probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma of the toy, solved exactly."""
    return MU + (x_start - MU) * math.sqrt((S**2 + sigma**2) / (S**2 + sigma_start**2))


def _alpha_bar(T=1000, schedule="linear"):
    return schedule_tensors(make_betas(schedule, T))["alpha_bar"]  # (T,) float64


# ---------------------------------------------------------------- grid and sigma mapping
def test_karras_grid_endpoints_and_rho():
    grid = karras_sigmas(10, 0.002, 80.0)
    assert grid.shape == (11,) and grid.dtype == torch.float64
    assert grid[0].item() == pytest.approx(80.0) and grid[9].item() == pytest.approx(0.002)
    assert grid[10] == 0 and bool((grid[1:] < grid[:-1]).all())
    uniform = karras_sigmas(10, 0.002, 80.0, rho=1.0)[:-1]
    assert torch.allclose(uniform, torch.linspace(80.0, 0.002, 10, dtype=torch.float64))
    # larger rho: more of the steps at small sigma (below the geometric middle of the range)
    middle = math.sqrt(0.002 * 80.0)
    below = [int((karras_sigmas(20, 0.002, 80.0, rho=rho)[:-1] < middle).sum()) for rho in (1, 3, 7, 20)]
    assert below == sorted(below) and below[0] < below[-1], below
    assert karras_sigmas(1, 0.1, 5.0).tolist() == [5.0, 0.0]
    with pytest.raises(ConfigError):
        karras_sigmas(0, 0.1, 5.0)
    with pytest.raises(ConfigError):
        karras_sigmas(5, 6.0, 5.0)


def test_vp_sigma_mapping_round_trip():
    alpha_bar = _alpha_bar()
    sigmas = vp_sigmas(alpha_bar)
    assert torch.allclose(sigmas, torch.sqrt((1 - alpha_bar) / alpha_bar))
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    steps = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(sigma_to_t(sigmas, sigmas), steps, atol=1e-9)
    assert torch.allclose(t_to_sigma(steps, sigmas), sigmas, rtol=1e-12)
    # between grid points: linear in log sigma, and the round trip holds for fractional t
    t = torch.tensor([0.25, 10.5, 500.7, 998.9], dtype=torch.float64)
    back = sigma_to_t(t_to_sigma(t, sigmas), sigmas)
    assert torch.allclose(back, t, atol=1e-9)
    half = t_to_sigma(10.5, sigmas)
    assert half.item() == pytest.approx(math.sqrt(sigmas[10].item() * sigmas[11].item()))
    # outside the schedule's range: clamped to the end steps
    assert sigma_to_t(1e-6, sigmas).item() == 0 and sigma_to_t(1e6, sigmas).item() == 999


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_denoiser_is_exact_on_the_schedule_and_rounds_t(prediction):
    """A model that knows x0 = c exactly: D(x, sigma) = c at the schedule's noise levels."""
    alpha_bar = _alpha_bar(T=100, schedule="cosine")
    sigmas = vp_sigmas(alpha_bar)
    c = torch.tensor([0.7, -0.2]).view(2, 1, 1, 1)
    seen = []

    def model_fn(x_t, t):
        seen.append(t)
        ab = alpha_bar[t].view(-1, 1, 1, 1).float()
        eps = (x_t - ab.sqrt() * c) / (1 - ab).sqrt()
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return c.expand_as(x_t)
        return ab.sqrt() * eps - (1 - ab).sqrt() * c  # v = sqrt(ab) eps - sqrt(1 - ab) x0

    denoise = vp_denoiser(model_fn, alpha_bar.float(), prediction)
    noise = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    for step in (0, 17, 60, 99):
        sigma = float(sigmas[step])
        x0 = denoise(c + sigma * noise, sigma)
        assert torch.allclose(x0, c.expand_as(x0), atol=1e-4 * max(1.0, sigma)), (step, x0)
        assert seen[-1].dtype == torch.int64 and seen[-1].tolist() == [step, step]
    # off the grid: the network gets the step nearest in log sigma
    near_17 = math.exp(0.4 * math.log(sigmas[18]) + 0.6 * math.log(sigmas[17]))
    denoise(c + near_17 * noise, near_17)
    assert seen[-1].tolist() == [17, 17]
    clipped = vp_denoiser(lambda x_t, t: 10 * torch.ones_like(x_t), alpha_bar, "x0", clip_denoised=True)
    assert clipped(noise, 1.0).max().item() == 1.0


# ---------------------------------------------------------------- exactness on the Gaussian toy
@pytest.mark.parametrize("name", list(SOLVERS))
def test_samples_match_the_gaussian_data(name):
    grid = karras_sigmas(256 if name == "euler" else 32, 0.002, 80.0)  # Euler's std error ~ 1.4 / N
    x = SOLVERS[name](gaussian_denoiser, (40000,), grid, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40000,)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)  # standard error 0.0025
    assert x.std().item() == pytest.approx(S, rel=0.02)


def test_stochastic_heun_matches_the_gaussian_data_and_uses_the_generator():
    grid = karras_sigmas(128, 0.002, 80.0)  # the churn's bias falls with N (std 0.524 at N = 32)
    options = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0)
    x = heun_sample(gaussian_denoiser, (40000,), grid, generator=torch.Generator().manual_seed(0), **options)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=0.02)
    # the churn noise comes from the generator: same start, other generator state -> other samples
    start = torch.randn(8, generator=torch.Generator().manual_seed(1))
    a, b, c = (
        heun_sample(
            gaussian_denoiser, (8,), grid, noise=start, generator=torch.Generator().manual_seed(s), **options
        )
        for s in (2, 2, 3)
    )
    assert torch.equal(a, b) and not torch.allclose(a, c)
    deterministic = heun_sample(gaussian_denoiser, (8,), grid, noise=start)
    assert not torch.allclose(a, deterministic)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_error_falls_at_the_order_of_the_solver(name):
    """Deterministic trajectories against the exact ODE solution: slope of log error vs log NFE."""
    sigma_min, sigma_max = 0.01, 10.0
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)
    nfes, errors = [], []
    for n in (8, 16, 32, 64):
        grid = karras_sigmas(n + 1, sigma_min, sigma_max)[:-1]  # n steps, ending at sigma_min
        x = SOLVERS[name](gaussian_denoiser, z.shape, grid, noise=z)
        exact = exact_flow(sigma_max * z, sigma_max, sigma_min)
        nfes.append(NFE[name](n))
        errors.append((x - exact).abs().max().item())
    slope = np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert slope == pytest.approx(-ORDER[name], abs=0.15), (slope, errors)


def test_euler_on_the_schedule_grid_is_ddim():
    """Euler in sigma is deterministic DDIM (EDM sec. 3): the same samples on DDIM's own steps."""
    alpha_bar = _alpha_bar(T=200)
    torch.manual_seed(0)
    weight = torch.randn(2, 2)

    def model_fn(x_t, t):  # any deterministic eps-model, nonlinear in x_t and t
        return torch.tanh(torch.einsum("ij,bjhw->bihw", weight, x_t)) * (1 + t.view(-1, 1, 1, 1) / 200)

    shape = (3, 2, 4, 4)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    ddim = ddim_sample(
        model_fn, shape, alpha_bar, steps=10, clip_denoised=False, generator=torch.Generator().manual_seed(5)
    )
    steps = ddim_timesteps(200, 10).flip(0)  # 190, ..., 0
    grid = torch.cat([vp_sigmas(alpha_bar)[steps], torch.zeros(1, dtype=torch.float64)])
    sigma_0 = grid[0].item()
    noise = z * math.sqrt(1 + sigma_0**2) / sigma_0  # DDIM starts from x_T ~ N(0, I) in the VP scale
    euler = euler_sample(vp_denoiser(model_fn, alpha_bar, "eps"), shape, grid, noise=noise)
    assert torch.allclose(euler, ddim, atol=1e-4), (euler - ddim).abs().max()
    # DPM-Solver++(2M)'s first step is the DDIM step too
    one_ddim = dpm_solver_pp_2m_sample(vp_denoiser(model_fn, alpha_bar, "eps"), shape, grid[:2], noise=noise)
    one_euler = euler_sample(vp_denoiser(model_fn, alpha_bar, "eps"), shape, grid[:2], noise=noise)
    assert torch.allclose(one_ddim, one_euler, atol=1e-5)


def test_per_sample_generators_and_bad_grids():
    grid = karras_sigmas(4, 0.01, 10.0)
    gens = [torch.Generator().manual_seed(i) for i in (1, 2)]
    both = dpm_solver_pp_2m_sample(gaussian_denoiser, (2, 3), grid, generator=gens)
    alone = dpm_solver_pp_2m_sample(
        gaussian_denoiser, (1, 3), grid, generator=[torch.Generator().manual_seed(2)]
    )
    assert torch.allclose(both[1:], alone)
    with pytest.raises(ConfigError):
        euler_sample(gaussian_denoiser, (2,), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ConfigError):
        heun_sample(gaussian_denoiser, (2,), grid, s_churn=-1.0)


# ---------------------------------------------------------------- the module's sample()
TINY = dict(
    base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.0, num_groups=8
)


class Counting(nn.Module):
    """Wraps a net and records the batch size and labels of every call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, []
        self.in_channels, self.out_channels = net.in_channels, net.out_channels
        self.image_size, self.num_classes = getattr(net, "image_size", None), net.num_classes

    def forward(self, x, t, y=None):
        self.calls.append((x.shape[0], None if y is None else y.clone()))
        return self.inner(x, t, y) if y is not None else self.inner(x, t)


def _module(num_classes=0, **kwargs):
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=num_classes, **TINY)
    for p in net.parameters():  # zero-initialised layers (output, residual branches): non-trivial
        if p.dim() > 1 and not p.any():
            nn.init.normal_(p, std=0.1)
    return Diffusion(Counting(net), sample_shape=(1, 16, 16), num_classes=10, num_timesteps=100, **kwargs)


@pytest.mark.parametrize("sampler", list(SOLVERS))
def test_module_sample_with_each_solver(sampler):
    module = _module(sampling=DiffusionSampling(sampler=sampler, steps=4))
    a = module.sample(2, generator=torch.Generator().manual_seed(1))
    assert len(module.net.calls) == NFE[sampler](4)
    b = module.sample(2, generator=torch.Generator().manual_seed(1))
    c = module.sample(2, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    grid = module.sigma_grid(4)
    sigmas = vp_sigmas(module.alpha_bar)
    assert sigmas[-1] > 80  # the linear schedule's top at T = 100 (221): capped at sigma_max
    assert grid[0].item() == 80.0 and grid[3].item() == pytest.approx(sigmas[0].item())
    assert grid[-1].item() == 0.0


def test_sigma_max_caps_the_solver_grid_only_when_lower_than_the_schedule():
    module = _module(sampling=DiffusionSampling(sampler="heun", steps=4))
    top = vp_sigmas(module.alpha_bar)[-1].item()
    module.sampling = module.sampling.replace(sigma_max=None)  # the schedule's own top
    assert module.sigma_grid(4)[0].item() == pytest.approx(top)
    module.sampling = module.sampling.replace(sigma_max=10 * top)  # above the schedule: the schedule's top
    assert module.sigma_grid(4)[0].item() == pytest.approx(top)
    module.sampling = module.sampling.replace(sigma_max=5.0)
    grid = module.sigma_grid(4)
    assert grid[0].item() == 5.0 and bool((grid[:-1] > grid[1:]).all())
    assert module.sampling_settings()["sigma_max"] == 5.0 and "sampling" not in module.hparams
    # an option overrides the module's setting for this grid only
    assert module.sigma_grid(4, sigma_max=2.0)[0].item() == 2.0
    assert module.sigma_grid(4, sigma_max=None)[0].item() == pytest.approx(top)
    assert module.sampling.sigma_max == 5.0


def test_module_solver_guidance_uses_both_branches_and_matches_the_pure_solver():
    module = _module(
        num_classes=10,
        sampling=DiffusionSampling(sampler="dpm_solver++", steps=3, clip_denoised=False),
        prediction="x0",
    )
    y = torch.tensor([3, 7])
    guided = module.sample(2, cond=y, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert len(module.net.calls) == 3
    assert all(size == 4 and labels.tolist() == [3, 7, 10, 10] for size, labels in module.net.calls)
    plain = module.sample(2, cond=y, guidance_scale=0.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(guided, plain)
    net = module.net.inner.eval()

    def by_hand(x_t, t):  # Ho & Salimans 2022 eq. 6 with w = 2
        return 3 * net(x_t, t, y) - 2 * net(x_t, t, torch.full_like(y, 10))

    expected = dpm_solver_pp_2m_sample(
        vp_denoiser(by_hand, module.alpha_bar, "x0"),
        (2, 1, 16, 16),
        module.sigma_grid(3),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(guided, expected.clamp(-1, 1), atol=1e-4)


def test_module_rejects_unknown_sampler():
    with pytest.raises(ConfigError, match="unknown sampler 'lms'; set model.sampling.sampler to"):
        _module().sample(1, sampler="lms")
