"""Flow matching (rectified flow): the path and its velocity, time sampling, the Euler / Heun / sigma
samplers on a Gaussian toy whose velocity field is known in closed form, guidance, training on
bundled MNIST, checkpoints and the latent-space hook."""

import math

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from lit_genai import paradigm
from lit_genai.data import MNIST5k
from lit_genai.diffusion.flow import FlowMatching, FlowSampling
from lit_genai.diffusion.flow_matching import (
    flow_denoiser,
    flow_euler_sample,
    flow_heun_sample,
    flow_interpolate,
    flow_loss,
    flow_sigma_sample,
    flow_target,
    flow_time_grid,
    flow_times,
    flow_velocity,
)
from lit_genai.diffusion.solvers import euler_sample
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), num_groups=4)
MU, S = 0.1, 0.25  # toy data ~ N(MU, S^2), inside [-1, 1]


def _flow(num_classes=0, **kwargs) -> FlowMatching:
    net = UNet(in_channels=1, num_classes=num_classes, dropout=0.0, **TINY)
    kwargs.setdefault("optimizer", lambda params: torch.optim.Adam(params, lr=2e-3))
    return FlowMatching(net, sample_shape=(1, 28, 28), num_classes=10, **kwargs)


def exact_velocity(x, t, mu=MU):
    """E[eps - x0 | x_t = x] for x0 ~ N(mu, S^2): x_t ~ N((1 - t) mu, (1 - t)^2 S^2 + t^2), and the
    flow moves each quantile: v = m' + (s'/s)(x - m) with m = (1 - t) mu, s^2 = (1 - t)^2 S^2 + t^2."""
    var = (1 - t) ** 2 * S**2 + t**2
    return -mu + (t - (1 - t) * S**2) / var * (x - (1 - t) * mu)


# ---------------------------------------------------------------------- the path


def test_interpolation_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=g)
    eps = eps.double()
    torch.testing.assert_close(flow_interpolate(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(flow_interpolate(x0, eps, torch.ones(3)), eps)
    t, h = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), 1e-6
    slope = (flow_interpolate(x0, eps, t + h) - flow_interpolate(x0, eps, t)) / h  # d x_t / dt
    torch.testing.assert_close(slope, flow_target(x0, eps), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow_interpolate(x0, eps, t)[1], 0.5 * (x0[1] + eps[1]))
    assert flow_loss(flow_target(x0, eps), x0, eps)["loss"].abs().max() == 0
    torch.testing.assert_close(
        flow_loss(torch.zeros_like(x0), x0, eps)["loss"], (eps - x0).pow(2).mean((1, 2, 3))
    )


def test_exact_velocity_is_the_conditional_mean_of_the_target():
    # Monte Carlo check of the toy's closed form: regress eps - x0 on x_t at t = 0.4
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(400_000, generator=g, dtype=torch.float64)
    eps = torch.randn(400_000, generator=g, dtype=torch.float64)
    x_t = flow_interpolate(x0, eps, torch.tensor([0.4], dtype=torch.float64))  # (N,)
    target = eps - x0
    slope = float(((x_t - x_t.mean()) * (target - target.mean())).mean() / x_t.var())
    intercept = float(target.mean() - slope * x_t.mean())
    v0, v1 = (
        exact_velocity(torch.tensor(0.0, dtype=torch.float64), 0.4),
        exact_velocity(torch.tensor(1.0), 0.4),
    )
    assert slope == pytest.approx(float(v1 - v0), abs=0.01) and intercept == pytest.approx(
        float(v0), abs=0.01
    )


def test_time_sampling_statistics():
    g = torch.Generator().manual_seed(0)
    u = flow_times(200_000, "uniform", generator=g)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005) and float(u.var()) == pytest.approx(
        1 / 12, abs=0.002
    )
    ln = flow_times(200_000, "logit_normal", 0.5, 0.8, generator=g)
    logit = torch.log(ln / (1 - ln))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.01) and float(logit.std()) == pytest.approx(
        0.8, abs=0.01
    )
    with pytest.raises(ConfigError, match="set model.time_sampling to uniform or logit_normal"):
        flow_times(3, "cosine")


def test_time_grid_is_uniform_or_shifted_from_noise_to_data():
    grid = flow_time_grid(4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow_time_grid(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    torch.testing.assert_close(shifted, 3 * grid / (1 + 2 * grid))  # SD3 eq. 23
    assert bool((shifted[1:-1] > grid[1:-1]).all())  # more of the steps at high noise
    with pytest.raises(ConfigError, match="positive integer"):
        flow_time_grid(0)


def test_flow_velocity_feeds_the_network_1000_t():
    seen = []

    def model_fn(x, t_net):
        seen.append(t_net)
        return 2 * x

    x = torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(flow_velocity(model_fn)(x, torch.tensor(0.25)), 2 * x)
    assert seen[0].shape == (3,) and seen[0].tolist() == [250.0] * 3


# ---------------------------------------------------------------------- samplers


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_steps_on_a_linear_ode_are_the_euler_and_heun_polynomials(shift):
    # dx/dt = a x: an Euler step multiplies x by 1 + a h, a Heun step by 1 + a h + (a h)^2 / 2
    a = -0.8
    times = flow_time_grid(5, shift)
    z = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    h = times[1:] - times[:-1]  # (N,) negative steps
    euler = flow_euler_sample(lambda x, t: a * x, z.shape, times, noise=z)
    heun = flow_heun_sample(lambda x, t: a * x, z.shape, times, noise=z)
    torch.testing.assert_close(euler, z * torch.prod(1 + a * h))
    torch.testing.assert_close(heun, z * torch.prod(1 + a * h + (a * h) ** 2 / 2))
    exact = z * math.exp(-a)  # x(0) = x(1) e^(a (0 - 1))
    assert (heun - exact).abs().max() < (euler - exact).abs().max()


def test_euler_stays_on_the_straight_path_of_a_point_mass():
    # data = x0*: v(x, t) = (x - x0*) / t exactly, and an Euler step lands on the same straight line,
    # so any grid returns x0* (the velocity is never evaluated at t = 0)
    x0 = torch.tensor(0.3, dtype=torch.float64)
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    for times in (flow_time_grid(1), flow_time_grid(3, 2.0), [0.9, 0.4, 0.0]):
        out = flow_euler_sample(lambda x, t: (x - x0) / t, z.shape, times, noise=z)
        torch.testing.assert_close(out, torch.full_like(z, 0.3))


@pytest.mark.parametrize(("sampler", "order"), [(flow_euler_sample, 1.0), (flow_heun_sample, 2.0)])
def test_ode_samplers_converge_to_the_exact_map_at_their_order(sampler, order):
    z = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * z  # the flow of a Gaussian moves each quantile: x_1 = z -> x_0 = MU + S z
    errors = [
        float((sampler(exact_velocity, z.shape, flow_time_grid(n), noise=z) - exact).abs().max())
        for n in (16, 32, 64)
    ]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(r == pytest.approx(order, abs=0.3) for r in rates), (errors, rates)
    samples = sampler(
        exact_velocity, (64, 1, 8, 8), flow_time_grid(64), generator=torch.Generator().manual_seed(1)
    )
    assert float(samples.mean()) == pytest.approx(MU, abs=0.01) and float(samples.std()) == pytest.approx(
        S, abs=0.01
    )


def test_flow_as_a_ve_denoiser_and_the_sigma_solvers():
    x0 = MU + S * torch.randn(100_000, dtype=torch.float64)
    sigma = 1.5
    t = sigma / (1 + sigma)
    eps = torch.randn(100_000, dtype=torch.float64)
    x_tilde = x0 + sigma * eps  # = x_t / (1 - t)
    torch.testing.assert_close(x_tilde * (1 - t), flow_interpolate(x0[None], eps[None], torch.tensor([t]))[0])
    D = flow_denoiser(exact_velocity)(x_tilde, sigma)
    torch.testing.assert_close(
        D, (S**2 * x_tilde + sigma**2 * MU) / (S**2 + sigma**2)
    )  # E[x0 | x0 + sigma eps]
    # Euler in sigma is Euler in t (both are x_s = (s / t) x_t + (1 - s / t) D), here from t = 0.9
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    times = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    in_t = flow_euler_sample(exact_velocity, z.shape, times, noise=z)
    in_sigma = flow_sigma_sample(exact_velocity, z.shape, times, noise=z, solver=euler_sample)
    torch.testing.assert_close(in_sigma, in_t)
    # DPM-Solver++(2M) from t = 1 converges to the exact map
    exact = MU + S * z
    errors = [
        float((flow_sigma_sample(exact_velocity, z.shape, flow_time_grid(n), noise=z) - exact).abs().max())
        for n in (4, 16, 64)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors


# ---------------------------------------------------------------------- the module


class GaussianV(nn.Module):
    """The exact velocity of the toy, with the label-dependent mean y / 20 when conditional."""

    def __init__(self, num_classes=0):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t_net, y=None):
        t = (t_net.double() / 1000).view(-1, 1, 1, 1)
        if y is not None:
            self.seen.append(y.clone())
        mu = MU if y is None else y.double().view(-1, 1, 1, 1) / 20
        return exact_velocity(x.double(), t, mu).to(x.dtype)


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 128), ("heun", 16), ("dpm_solver++", 32)])
def test_module_samples_the_toy(sampler, steps):
    module = FlowMatching(
        GaussianV(), sample_shape=(1, 16, 16), sampling=FlowSampling(sampler=sampler, steps=steps)
    )
    samples = module.sample(16, generator=torch.Generator().manual_seed(0))  # 4096 values
    assert samples.shape == (16, 1, 16, 16)
    z = paradigm.randn((16, 1, 16, 16), torch.Generator().manual_seed(0), torch.device("cpu"))
    exact = (MU + S * z).clamp(-1, 1)  # the exact flow of the same starting noise
    assert float(samples.mean()) == pytest.approx(float(exact.mean()), abs=0.002)
    assert float(samples.std()) == pytest.approx(float(exact.std()), abs=0.01)
    assert float(exact.std()) == pytest.approx(S, abs=0.01)
    coarse = module.sample(16, steps=4, generator=torch.Generator().manual_seed(0))
    assert (coarse - exact).abs().mean() > (samples - exact).abs().mean()  # the error falls with the steps


def test_shifted_time_grid_samples_the_same_distribution():
    module = FlowMatching(
        GaussianV(), sample_shape=(1, 16, 16), sampling=FlowSampling(sampler="heun", steps=16)
    )
    plain = module.sample(16, generator=torch.Generator().manual_seed(0))
    module.sampling = module.sampling.replace(
        time_shift=3.0
    )  # SD3's shifted grid: other points, the same distribution
    shifted = module.sample(16, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, plain)
    torch.testing.assert_close(shifted, plain, atol=0.02, rtol=0)


def test_guidance_zero_is_the_conditional_model_and_w_follows_eq_6():
    net = GaussianV(num_classes=10)
    module = FlowMatching(net, sample_shape=(1, 4, 4), num_classes=10, sampling=FlowSampling(steps=5))
    y = torch.tensor([2, 7, 9])
    x, t = torch.randn(3, 1, 4, 4), torch.full((3,), 300.0)
    torch.testing.assert_close(module._model_fn(y, 0.0)(x, t), net(x, t, y))
    guided = module._model_fn(y, 1.5)(x, t)
    assert torch.equal(net.seen[-1], torch.tensor([2, 7, 9, 10, 10, 10]))
    torch.testing.assert_close(guided, 2.5 * net(x, t, y) - 1.5 * net(x, t, torch.full_like(y, 10)))
    plain = module.sample(3, cond=y, guidance_scale=0.0, generator=torch.Generator().manual_seed(1))
    direct = flow_euler_sample(
        lambda x, t: net(x, torch.full((3,), 1000 * t), y),
        (3, 1, 4, 4),
        flow_time_grid(5),
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(plain, direct.clamp(-1, 1))
    module.sample(2, generator=torch.Generator().manual_seed(1))  # no labels: the null label, as int64
    assert net.seen[-1].dtype == torch.long and bool((net.seen[-1] == 10).all())


def test_label_dropout_and_bad_settings():
    net = GaussianV(num_classes=10)
    FlowMatching(net, sample_shape=(1, 4, 4), num_classes=10, p_uncond=1.0).training_step(
        (torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])), 0
    )
    assert torch.equal(net.seen[-1], torch.full((4,), 10))
    with pytest.raises(ConfigError, match="set model.sampling.sampler to euler, heun, dpm_solver"):
        FlowMatching(GaussianV(), sample_shape=(1, 4, 4)).sample(1, sampler="ddim")
    with pytest.raises(ConfigError, match="model.logit_std=0 must be positive"):
        FlowMatching(GaussianV(), sample_shape=(1, 4, 4), logit_std=0)


def test_training_on_bundled_mnist_lowers_the_loss(tmp_path):
    data = MNIST5k(batch_size=16)
    module = _flow(num_classes=10, time_sampling="logit_normal")
    trainer = quiet_trainer(tmp_path, max_steps=25, limit_val_batches=2, val_check_interval=25)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    # a zero-output net: E||eps - x0||^2 = 1 + E[x0^2], about 1.7 for MNIST in [-1, 1] (mostly -1)
    assert 1.3 < before < 2.2
    assert after < 0.7 * before, (before, after)
    assert after == trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]  # fixed t, noise


def test_checkpoint_round_trip_restores_weights_and_samples(tmp_path):
    module = _flow(
        num_classes=10, sampling=FlowSampling(steps=3), time_sampling="logit_normal", logit_mean=0.3
    )
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=MNIST5k(batch_size=8))
    path = tmp_path / "flow.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["time_sampling"] == "logit_normal" and hparams["logit_mean"] == 0.3
    assert not {"net", "optimizer", "sampling"} & set(hparams)  # the sampling settings: from the command line
    net = UNet(in_channels=1, num_classes=10, dropout=0.0, **TINY)
    loaded = FlowMatching.load_from_checkpoint(
        path, net=net, weights_only=True, sampling=FlowSampling(steps=3)
    )
    assert loaded.sampling == FlowSampling(steps=3)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    cond = torch.tensor([3, 8])
    a = module.sample(2, cond=cond, sampler="heun", generator=torch.Generator().manual_seed(4))
    b = loaded.sample(2, cond=cond, sampler="heun", generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    tested = quiet_trainer(tmp_path, limit_test_batches=1).test(loaded, MNIST5k(batch_size=8), verbose=False)[
        0
    ]
    assert set(tested) == {"test/loss"} and tested["test/loss"] > 0


def test_latent_flow_models_latents_and_samples_images(ae_checkpoint, tmp_path):
    net = UNet(
        in_channels=2, base_channels=8, channel_mult=(1,), attention_levels=(), num_groups=4, dropout=0.0
    )
    module = FlowMatching(
        net, sample_shape=(1, 28, 28), autoencoder=str(ae_checkpoint), sampling=FlowSampling(steps=3)
    )
    assert module.net_shape == (2, 7, 7)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=MNIST5k(batch_size=8))
    assert "val/loss" in trainer.callback_metrics
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.net.parameters()}
    x = module.sample(2, generator=torch.Generator().manual_seed(0))
    latents = flow_euler_sample(
        module.velocity(), (2, 2, 7, 7), flow_time_grid(3), generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (2, 1, 28, 28)
    torch.testing.assert_close(x, module.first_stage.decode(latents).clamp(-1, 1))
