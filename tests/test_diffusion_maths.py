"""Tests of the pure diffusion maths: schedules, targets and losses, DDPM and DDIM samplers."""

import math

import pytest
import torch

from lit_genai.diffusion.losses import (
    diffusion_loss,
    min_snr_weight,
    prediction_target,
    to_x0_eps,
)
from lit_genai.diffusion.sampling import ddim_sample, ddim_timesteps, ddpm_sample
from lit_genai.diffusion.schedules import (
    cosine_betas,
    expand,
    extract,
    linear_betas,
    make_betas,
    q_sample,
    schedule_tensors,
    sigmoid_betas,
)

PREDICTIONS = ["eps", "x0", "v"]


def _alpha_bar32(name: str, num_timesteps: int) -> torch.Tensor:
    """alpha_bar as the LightningModule holds it: a float32 buffer."""
    return schedule_tensors(make_betas(name, num_timesteps))["alpha_bar"].float()


# ---------------------------------------------------------------- schedules


def test_linear_betas_golden_values_and_rescaling():
    betas = linear_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    # improved-diffusion scales both ends by 1000 / T
    betas = linear_betas(500)
    assert betas[0].item() == pytest.approx(2e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.04, rel=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_every_schedule_is_a_valid_diffusion(name, num_timesteps):
    betas = make_betas(name, num_timesteps)
    assert betas.shape == (num_timesteps,) and betas.dtype == torch.float64
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())
    alpha_bar = schedule_tensors(betas)["alpha_bar"]
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all()), "alpha_bar must strictly decrease"
    assert alpha_bar[0].item() > 0.99, "the first step must add little noise"
    assert alpha_bar[-1].item() < 1e-3, "x_T must be (almost) pure noise"


def test_cosine_schedule_matches_closed_form():
    num_timesteps, s = 1000, 0.008
    betas = cosine_betas(num_timesteps, s=s)
    assert betas.max().item() <= 0.999
    alpha_bar = torch.cumprod(1 - betas, dim=0)

    def f(t: int) -> float:  # Nichol & Dhariwal eq. 17
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    for t in [1, 10, 250, 500, 900, 990]:  # before the clipping of beta near t = T
        assert alpha_bar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


def test_sigmoid_schedule_matches_closed_form():
    num_timesteps, start, end, tau = 200, -3.0, 3.0, 0.7
    alpha_bar = torch.cumprod(1 - sigmoid_betas(num_timesteps, start, end, tau), dim=0)

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    def gamma(t: float) -> float:  # Jabri et al. 2022 (RIN), sigmoid_schedule
        return (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))

    for t in [1, 50, 100, 150, 190]:
        assert alpha_bar[t - 1].item() == pytest.approx(gamma(t / num_timesteps), rel=1e-9)


def test_unknown_schedule_name_and_too_short_linear_schedule_raise():
    with pytest.raises(ValueError, match="cosine"):
        make_betas("quadratic", 1000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_timesteps > 20"):
        linear_betas(20)  # beta_T = 0.02 * 1000 / 20 = 1: x_T would carry no trace of x0


def test_schedule_tensors_identities():
    betas = cosine_betas(300)
    sched = schedule_tensors(betas)
    for key, value in sched.items():
        assert value.shape == (300,) and value.dtype == torch.float64, key
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    torch.testing.assert_close(sched["alphas"], 1 - betas)
    torch.testing.assert_close(sched["alpha_bar"], alpha_bar)
    torch.testing.assert_close(sched["alpha_bar_prev"], alpha_bar_prev)
    torch.testing.assert_close(sched["sqrt_alpha_bar"] ** 2, alpha_bar)
    torch.testing.assert_close(sched["sqrt_one_minus_alpha_bar"] ** 2, 1 - alpha_bar)
    torch.testing.assert_close(sched["snr"], alpha_bar / (1 - alpha_bar))
    torch.testing.assert_close(
        sched["posterior_variance"], betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    )  # DDPM eq. 7
    assert sched["posterior_variance"][0].item() == 0.0
    log_var = sched["posterior_log_variance_clipped"]
    assert bool(torch.isfinite(log_var).all())
    torch.testing.assert_close(log_var[1:], sched["posterior_variance"][1:].log())


def test_posterior_is_bayes_rule_of_the_forward_process():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), derived by Gaussian conditioning."""
    sched = schedule_tensors(linear_betas(100))
    x0, x_t = torch.randn(2, 5, dtype=torch.float64).unbind(0)
    for t in [1, 10, 50, 99]:  # index t >= 1 (at t = 0 the posterior is the point x0)
        beta, alpha = sched["betas"][t], sched["alphas"][t]
        ab_prev = sched["alpha_bar_prev"][t]
        precision = alpha / beta + 1 / (1 - ab_prev)
        mean = (alpha.sqrt() / beta * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
        got = sched["posterior_mean_coef1"][t] * x0 + sched["posterior_mean_coef2"][t] * x_t
        torch.testing.assert_close(got, mean)
        torch.testing.assert_close(sched["posterior_variance"][t], 1 / precision)
    torch.testing.assert_close(sched["posterior_mean_coef1"][0].item(), 1.0)
    torch.testing.assert_close(sched["posterior_mean_coef2"][0].item(), 0.0)


def test_extract_shapes_for_broadcasting():
    a = torch.arange(10, dtype=torch.float64)
    t = torch.tensor([0, 3, 9])
    out = extract(a, t, 4)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float64
    assert out.flatten().tolist() == [0.0, 3.0, 9.0]


def test_expand_shapes_per_example_values_and_leaves_scalars():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    out = expand(torch.tensor([1.0, 2.0, 3.0]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float64
    assert (out * x + out).flatten(1)[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert expand(0.5, x) == 0.5
    scalar = torch.tensor(0.5)
    assert expand(scalar, x) is scalar
    assert expand(torch.ones(5), torch.zeros(5)).shape == (5,)  # x (B,): nothing to add


def test_q_sample_has_the_forward_process_moments():
    alpha_bar = _alpha_bar32("linear", 1000)
    x0 = torch.rand(3, 4, 4) - 0.5  # (C, H, W)
    n = 20_000
    for step in [0, 300, 999]:
        t = torch.full((n,), step, dtype=torch.long)
        x_t = q_sample(x0.expand(n, -1, -1, -1), t, torch.randn(n, 3, 4, 4), alpha_bar)  # (n, C, H, W)
        ab = alpha_bar[step].item()
        assert x_t.dtype == torch.float32
        # DDPM eq. 4: mean sqrt(ab) x0, variance 1 - ab; ~5 standard errors
        torch.testing.assert_close(x_t.mean(0), math.sqrt(ab) * x0, atol=5 * math.sqrt((1 - ab) / n), rtol=0)
        var = x_t.var(0)
        assert (var - (1 - ab)).abs().max().item() < 5 * (1 - ab) * math.sqrt(2 / n) + 1e-6


# ---------------------------------------------------------------- targets and losses


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_round_trips_recover_x0_and_eps(prediction):
    alpha_bar = _alpha_bar32("cosine", 1000)
    x0, eps = torch.rand(6, 3, 8, 8) * 2 - 1, torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 1, 100, 500, 900, 998])
    ab = extract(alpha_bar, t, 4)  # (B, 1, 1, 1)
    x_t = q_sample(x0, t, eps, alpha_bar)
    target = prediction_target(prediction, x0, eps, ab)
    got_x0, got_eps = to_x0_eps(prediction, target, x_t, ab)
    torch.testing.assert_close(got_x0, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got_eps, eps, atol=2e-4, rtol=1e-4)


def test_v_target_is_salimans_ho_velocity():
    x0, eps, ab = torch.tensor([0.5]), torch.tensor([-1.0]), torch.tensor([0.64])
    # v = sqrt(ab) eps - sqrt(1 - ab) x0 = 0.8 * -1 - 0.6 * 0.5
    assert prediction_target("v", x0, eps, ab).item() == pytest.approx(-1.1)


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("eps", [1.0, 1.0, 0.1]),  # min(snr, 5) / snr
        ("x0", [0.5, 5.0, 5.0]),  # min(snr, 5)
        ("v", [0.5 / 1.5, 5 / 6, 5 / 51]),  # min(snr, 5) / (snr + 1)
    ],
)
def test_min_snr_weight_golden_values(prediction, expected):
    snr = torch.tensor([0.5, 5.0, 50.0], dtype=torch.float64)
    weight = min_snr_weight(snr, prediction, gamma=5.0)
    torch.testing.assert_close(weight, torch.tensor(expected, dtype=torch.float64))


def test_diffusion_loss_is_per_example_mse_with_optional_min_snr():
    model_out, target = torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)
    target[1] *= 2.0
    out = diffusion_loss(model_out, target)
    torch.testing.assert_close(out["mse"], torch.tensor([1.0, 4.0, 1.0]))
    torch.testing.assert_close(out["loss"], out["mse"])
    snr = torch.tensor([0.5, 5.0, 50.0])
    out = diffusion_loss(model_out, target, snr, prediction="eps", min_snr_gamma=5.0)
    torch.testing.assert_close(out["mse"], torch.tensor([1.0, 4.0, 1.0]))
    torch.testing.assert_close(out["loss"], torch.tensor([1.0, 4.0, 0.1]))
    with pytest.raises(ValueError, match="snr_t"):
        diffusion_loss(model_out, target, None, min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="prediction"):
        diffusion_loss(model_out, target, prediction="score")  # type: ignore[arg-type]


def test_diffusion_loss_backpropagates():
    model_out = torch.zeros(2, 1, 2, 2, requires_grad=True)
    loss = diffusion_loss(model_out, torch.ones(2, 1, 2, 2), torch.tensor([1.0, 9.0]), "v", 5.0)["loss"]
    loss.mean().backward()
    assert model_out.grad is not None and bool((model_out.grad != 0).all())


# ---------------------------------------------------------------- samplers


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 10).tolist() == list(range(0, 1000, 100))
    assert ddim_timesteps(1000, 1000).tolist() == list(range(1000))
    quad = ddim_timesteps(1000, 20, "quadratic")
    assert quad.dtype == torch.int64 and len(quad) == 20
    assert quad[0].item() == 0 and quad[-1].item() == 800  # int(sqrt(0.8 T) ** 2)
    assert bool((quad[1:] >= quad[:-1]).all()) and len(set(quad.tolist())) >= 18
    for steps in [0, -1, 1001]:
        with pytest.raises(ValueError, match="steps"):
            ddim_timesteps(1000, steps)
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(lambda x, t: x, (1, 1, 2, 2), _alpha_bar32("cosine", 10), steps=11)


def _point_mass_oracle(prediction: str, x0_star: torch.Tensor, alpha_bar: torch.Tensor):
    """The exact denoiser when the data distribution is the single point x0_star."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = extract(alpha_bar, t, x_t.ndim)  # (B, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x0_star) / (1 - ab).sqrt()
        return prediction_target(prediction, x0_star.expand_as(x_t), eps, ab)

    return model_fn


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_exact_denoiser_returns_the_data_point(prediction, eta):
    alpha_bar = _alpha_bar32("linear", 1000)
    x0_star = torch.rand(2, 3, 8, 8) - 0.5
    model_fn = _point_mass_oracle(prediction, x0_star, alpha_bar)
    gen = torch.Generator().manual_seed(1)
    out = ddim_sample(
        model_fn, x0_star.shape, alpha_bar, steps=20, eta=eta, prediction=prediction, generator=gen
    )
    torch.testing.assert_close(out, x0_star, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_with_exact_denoiser_returns_the_data_point(prediction, variance):
    betas = linear_betas(100).float()
    alpha_bar = schedule_tensors(betas)["alpha_bar"].float()
    x0_star = torch.rand(2, 3, 8, 8) - 0.5
    model_fn = _point_mass_oracle(prediction, x0_star, alpha_bar)
    gen = torch.Generator().manual_seed(1)
    out = ddpm_sample(model_fn, x0_star.shape, betas, prediction=prediction, variance=variance, generator=gen)
    torch.testing.assert_close(out, x0_star, atol=1e-5, rtol=0)


def test_samplers_reproduce_a_gaussian_data_distribution():
    """With the exact denoiser of N(mu, s^2) data, DDPM (all steps) and fine DDIM sample N(mu, s^2).

    Unlike the point mass, this checks the noise each step adds (DDPM) and the deterministic
    trajectory (DDIM, eta = 0), not just the final x0 prediction.
    """
    mu, s = 0.3, 0.2
    betas = linear_betas(1000).float()
    alpha_bar = schedule_tensors(betas)["alpha_bar"].float()

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = extract(alpha_bar, t, x_t.ndim).double()  # (B, 1, 1, 1)
        x_t = x_t.double()
        x0 = mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x_t - ab.sqrt() * mu)  # E[x0 | x_t]
        return ((x_t - ab.sqrt() * x0) / (1 - ab).sqrt()).float()

    shape = (16, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    samples = {
        "ddpm": ddpm_sample(eps_fn, shape, betas, clip_denoised=False, generator=gen),
        "ddim": ddim_sample(eps_fn, shape, alpha_bar, steps=1000, clip_denoised=False, generator=gen),
    }
    for name, x in samples.items():
        assert x.mean().item() == pytest.approx(mu, abs=0.01), name
        assert x.std().item() == pytest.approx(s, rel=0.04), name


@pytest.mark.parametrize("clip_denoised", [True, False])
def test_ddim_eta_one_over_all_steps_is_ddpm_with_posterior_variance(clip_denoised):
    """DDIM eq. 16 with eta = 1 and every step is DDPM with sigma^2 = beta tilde (DDIM sec. 4.1)."""
    betas = cosine_betas(50).float()
    alpha_bar = schedule_tensors(betas)["alpha_bar"].float()

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x_t) * (1 + t.view(-1, 1, 1, 1) / 50)

    shape = (2, 3, 4, 4)
    ddpm = ddpm_sample(
        model_fn,
        shape,
        betas,
        variance="beta_tilde",
        clip_denoised=clip_denoised,
        generator=torch.Generator().manual_seed(3),
    )
    ddim = ddim_sample(
        model_fn,
        shape,
        alpha_bar,
        steps=50,
        eta=1.0,
        clip_denoised=clip_denoised,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_samplers_call_the_model_with_decreasing_int64_steps():
    calls: list[torch.Tensor] = []

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return 0.1 * x_t

    ddim_sample(model_fn, (3, 1, 2, 2), _alpha_bar32("linear", 1000), steps=10)
    assert all(t.dtype == torch.int64 and t.shape == (3,) for t in calls)
    assert [int(t[0]) for t in calls] == list(range(900, -1, -100))
    calls.clear()
    ddpm_sample(model_fn, (3, 1, 2, 2), linear_betas(25).float())
    assert [int(t[0]) for t in calls] == list(range(24, -1, -1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_are_deterministic_given_the_generator(sampler):
    betas = linear_betas(40).float()
    alpha_bar = schedule_tensors(betas)["alpha_bar"].float()
    shape = (2, 3, 5, 7)

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        model_fn = lambda x, t: 0.1 * x
        if sampler == "ddpm":
            return ddpm_sample(model_fn, shape, betas, generator=gen)
        return ddim_sample(model_fn, shape, alpha_bar, steps=10, eta=0.5, generator=gen)

    a, b, c = sample(0), sample(0), sample(1)
    assert a.shape == shape
    assert torch.equal(a, b), "same seed must give identical samples"
    assert not torch.allclose(a, c), "different seeds must give different samples"


def test_sampler_rejects_bad_arguments():
    alpha_bar = _alpha_bar32("cosine", 10)
    with pytest.raises(ValueError, match="prediction"):
        ddim_sample(lambda x, t: x, (1, 1, 2, 2), alpha_bar, steps=5, prediction="score")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda x, t: x, (1, 1, 2, 2), alpha_bar, steps=5, eta=-0.1)
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(lambda x, t: x[:, :1], (1, 2, 2, 2), alpha_bar, steps=5)


def test_progress_bar_names_the_sampler(capsys):
    ddim_sample(lambda x, t: x, (1, 1, 2, 2), _alpha_bar32("linear", 100), steps=5, progress=True)
    assert "DDIM 5 steps" in capsys.readouterr().err


def _reference_ddim(model_fn, x_T, noise, alpha_bar, taus, eta):
    """DDIM eq. 12 + 16 written out in float64 numpy, independently of the library's loop.

    ``taus`` increasing visited steps; ``noise`` an iterator of the z draws (one per step with sigma > 0).
    """
    import numpy as np

    x = x_T.double().numpy()
    for k in range(len(taus) - 1, -1, -1):
        t = taus[k]
        a_t = alpha_bar[t]
        a_prev = alpha_bar[taus[k - 1]] if k > 0 else 1.0  # the previous *visited* step's alpha_bar
        eps = model_fn(torch.from_numpy(x).float(), torch.full((x.shape[0],), t)).double().numpy()
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * next(noise).double().numpy()
    return torch.from_numpy(x)


@pytest.mark.parametrize("skip", ["uniform", "quadratic"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_strided_ddim_matches_an_independent_computation(skip, eta):
    # 10 of T = 1000 steps: a sampler that used alpha_bar of t - 1 instead of the previous visited
    # step (or of the wrong end of the sequence) lands far from the reference.
    import numpy as np

    T, shape = 1000, (4, 1, 3, 3)
    betas = np.linspace(1e-4, 0.02, T)  # DDPM's linear schedule, recomputed here
    alpha_bar = np.cumprod(1 - betas)
    taus = (
        list(range(0, T, T // 10))
        if skip == "uniform"
        else list((np.linspace(0, np.sqrt(0.8 * T), 10) ** 2).astype(np.int64))
    )

    def model_fn(x_t, t):  # a smooth stand-in for a network: depends on x_t and t
        return 0.5 * torch.tanh(x_t) + 0.1 * (t.float() / T)[:, None, None, None]

    out = ddim_sample(
        model_fn,
        shape,
        torch.from_numpy(alpha_bar).float(),
        steps=10,
        eta=eta,
        skip=skip,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(0),
    )
    draws = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=draws)
    noise = iter(lambda: torch.randn(shape, generator=draws), None)
    expected = _reference_ddim(model_fn, x_T, noise, alpha_bar, taus, eta)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
