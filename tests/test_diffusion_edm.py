"""EDM (Karras et al. 2022): preconditioning identities, the log-normal noise levels, the weighted
loss, sampling a Gaussian toy through its closed-form denoiser, guidance, training on bundled MNIST,
checkpoints and the latent-space hook."""

import math

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from lit_genai.data import MNIST5k
from lit_genai.diffusion.edm import EDM, EDMSampling
from lit_genai.diffusion.preconditioning import (
    edm_add_noise,
    edm_denoise,
    edm_denoiser,
    edm_loss,
    edm_loss_weight,
    edm_net_time,
    edm_preconditioning,
    edm_target,
    log_normal_sigmas,
)
from lit_genai.diffusion.solvers import heun_sample, karras_sigmas
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet

SD = 0.5  # sigma_data
TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), num_groups=4)


def _edm(num_classes=0, **kwargs) -> EDM:
    net = UNet(in_channels=1, num_classes=num_classes, dropout=0.0, **TINY)
    kwargs.setdefault("optimizer", lambda params: torch.optim.Adam(params, lr=2e-3))
    return EDM(net, sample_shape=(1, 28, 28), num_classes=10, **kwargs)


# ---------------------------------------------------------------------- preconditioning (Table 1)


def test_preconditioning_is_table_1_for_floats_and_tensors():
    sigma = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, SD)
    torch.testing.assert_close(c_skip, SD**2 / (sigma**2 + SD**2))
    torch.testing.assert_close(c_out, sigma * SD / torch.sqrt(sigma**2 + SD**2))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + SD**2))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    floats = edm_preconditioning(2.0, SD)
    assert all(isinstance(c, float) for c in floats)
    assert floats == pytest.approx([float(c[3]) for c in (c_skip, c_out, c_in, c_noise)])
    # c_in scales x = x0 + sigma n of data with std sigma_data to unit variance
    assert (c_in**2 * (SD**2 + sigma**2)).tolist() == pytest.approx([1.0] * 5)


def test_denoiser_tends_to_the_identity_as_sigma_goes_to_zero():
    x, F = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    errors = [float((edm_denoise(F, x, s, SD) - x).abs().max()) for s in (1e-1, 1e-3, 1e-5)]
    assert errors[2] < 1e-4 and errors[0] > errors[1] > errors[2]
    # per-example sigma (B,) broadcasts over the pixels
    sigma = torch.tensor([1e-6, 1.0, 10.0], dtype=torch.float64)
    D = edm_denoise(F, x, sigma, SD)
    torch.testing.assert_close(D[0], x[0], atol=1e-5, rtol=0)
    c_skip, c_out, _, _ = edm_preconditioning(10.0, SD)
    torch.testing.assert_close(D[2], c_skip * x[2] + c_out * F[2])


def test_preconditioning_identities_and_limits():
    sigma = torch.tensor([1e-8, 0.01, 0.5, 3.0, 1e8], dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm_preconditioning(sigma, SD)
    # c_skip + c_out^2 / sd^2 = (sd^2 + sigma^2) / (sigma^2 + sd^2)
    torch.testing.assert_close(c_skip + c_out**2 / SD**2, torch.ones_like(sigma))
    torch.testing.assert_close(c_out, sigma * SD * c_in)
    torch.testing.assert_close(edm_loss_weight(sigma, SD), 1 / c_out**2)
    # sigma -> 0: D = x (c_skip -> 1, c_out -> 0); sigma -> inf: D = sd F (c_skip -> 0, c_out -> sd)
    assert float(c_skip[0]) == pytest.approx(1.0) and float(c_out[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(c_skip[-1]) == pytest.approx(0.0, abs=1e-15) and float(c_out[-1]) == pytest.approx(SD)


def test_noising_broadcasts_a_float_or_per_example_sigma():
    x0, n = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(edm_add_noise(x0, 0.7, n), x0 + 0.7 * n)
    sigma = torch.tensor([0.0, 1.0, 2.0])  # float32: cast to x0's dtype
    x = edm_add_noise(x0, sigma, n)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, x0 + sigma.double().view(3, 1, 1, 1) * n)


def test_denoiser_feeds_the_network_c_in_x_and_the_net_time_and_mixes_its_output():
    seen = []

    def model_fn(x_in, t):  # a stand-in F that records its inputs
        seen.append((x_in, t))
        return torch.full_like(x_in, 0.25, dtype=torch.float32)

    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    D = edm_denoiser(model_fn, SD)(x, torch.tensor(2.0))  # a 0-dim tensor sigma is read as a float
    c_skip, c_out, c_in, _ = edm_preconditioning(2.0, SD)
    ((x_in, t),) = seen
    torch.testing.assert_close(x_in, c_in * x)
    assert t.shape == (3,) and torch.allclose(t, torch.full((3,), edm_net_time(2.0)))
    assert D.dtype == torch.float64
    torch.testing.assert_close(D, c_skip * x + c_out * 0.25)
    torch.testing.assert_close(edm_denoiser(model_fn, SD)(x, 1e-9), x)  # D(x; sigma -> 0) = x


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 5.0, 50.0])
def test_effective_target_has_unit_variance_and_the_ideal_denoiser_of_a_gaussian_is_c_skip_x(sigma):
    g = torch.Generator().manual_seed(0)
    x0 = SD * torch.randn(200_000, generator=g, dtype=torch.float64)  # data ~ N(0, sigma_data^2)
    x = x0 + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
    target = edm_target(x0, x, sigma, SD)
    assert float(target.var()) == pytest.approx(1.0, abs=0.015)
    # E[x0 | x] = sd^2 / (sd^2 + sigma^2) x = c_skip x: the ideal network outputs F = 0, and its
    # loss is the irreducible E[target^2] = 1 at every noise level.
    ideal = SD**2 / (SD**2 + sigma**2) * x
    c_skip, c_out, _, _ = edm_preconditioning(sigma, SD)
    F_ideal = (ideal - c_skip * x) / c_out
    assert float(F_ideal.abs().max()) < 1e-12
    loss = edm_loss(F_ideal[None], x0[None], x[None], torch.tensor([sigma], dtype=torch.float64), SD)
    assert float(loss["loss"]) == pytest.approx(1.0, abs=0.015)


def test_weighted_loss_is_lambda_times_the_denoiser_error_and_zero_for_a_perfect_denoiser():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64).clamp(-1, 1)
    sigma = torch.tensor([0.003, 0.2, 1.5, 40.0], dtype=torch.float64)
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    F = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    terms = edm_loss(F, x0, x, sigma, SD)
    D = edm_denoise(F, x, sigma, SD)
    torch.testing.assert_close(terms["mse"], (D - x0).pow(2).mean((1, 2, 3)))
    # EDM eq. 8: lambda(sigma) ||D - x0||^2 = ||F - target||^2 with lambda = 1 / c_out^2
    torch.testing.assert_close(terms["loss"], edm_loss_weight(sigma, SD) * terms["mse"])
    torch.testing.assert_close(edm_loss_weight(sigma, SD), 1 / edm_preconditioning(sigma, SD)[1] ** 2)
    perfect = edm_loss(edm_target(x0, x, sigma, SD), x0, x, sigma, SD)  # D(x) = x0 exactly
    assert float(perfect["loss"].abs().max()) < 1e-20 and float(perfect["mse"].abs().max()) < 1e-20


def test_log_normal_sigmas_have_the_configured_log_mean_and_std():
    sigma = log_normal_sigmas(200_000, -1.2, 1.2, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (200_000,) and bool((sigma > 0).all())
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.01)
    assert float(sigma.log().std()) == pytest.approx(1.2, abs=0.01)
    reference = torch.distributions.LogNormal(-1.2, 1.2)
    for q in (0.05, 0.3, 1.0, 4.0):  # the empirical CDF matches the log-normal's
        assert float((sigma <= q).double().mean()) == pytest.approx(
            float(reference.cdf(torch.tensor(q))), abs=0.005
        )
    again = log_normal_sigmas(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, log_normal_sigmas(5, generator=torch.Generator().manual_seed(3)))


def test_net_time_maps_the_sampling_range_onto_ddpm_steps():
    assert edm_net_time(0.002) == pytest.approx(0.0, abs=1e-9)
    assert edm_net_time(80.0) == pytest.approx(1000.0)
    assert edm_net_time(math.sqrt(0.002 * 80.0)) == pytest.approx(500.0)  # affine in ln(sigma)
    sigma = torch.tensor([0.01, 0.5, 3.0])
    c_noise = edm_preconditioning(sigma)[3]
    torch.testing.assert_close(edm_net_time(sigma), 1000 * (4 * c_noise - math.log(0.002)) / math.log(40000))


# ---------------------------------------------------------------------- sampling


MU, S = 0.1, 0.25  # toy data ~ N(MU, S^2), inside [-1, 1]; sigma_data = 0.5 (a mismatch F absorbs)


class GaussianF(nn.Module):
    """The exact network F of the toy: reads sigma back from the time input, D = E[x0 | x] in closed form."""

    def __init__(self, mean_of_label=None):
        super().__init__()
        self.mean_of_label = mean_of_label
        self.num_classes = 10 if mean_of_label is not None else 0
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x_in, t, y=None):
        sigma = 0.002 * 40000 ** (t.double() / 1000)  # the inverse of edm_net_time
        sigma = sigma.view(-1, 1, 1, 1)
        x = x_in.double() * torch.sqrt(sigma**2 + SD**2)  # undo c_in
        mu = MU if y is None else self.mean_of_label(y).double().view(-1, 1, 1, 1)
        if y is not None:
            self.seen.append(y.clone())
        D = (S**2 * x + sigma**2 * mu) / (S**2 + sigma**2)
        c_skip, c_out = SD**2 / (sigma**2 + SD**2), sigma * SD / torch.sqrt(sigma**2 + SD**2)
        return ((D - c_skip * x) / c_out).to(x_in.dtype)


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 128), ("heun", 32), ("dpm_solver++", 32)])
def test_sampling_a_gaussian_toy_gives_its_mean_and_std(sampler, steps):
    module = EDM(GaussianF(), sample_shape=(1, 16, 16), sampling=EDMSampling(sampler=sampler, steps=steps))
    samples = module.sample(16, generator=torch.Generator().manual_seed(0))  # 4096 values
    assert samples.shape == (16, 1, 16, 16)
    assert float(samples.mean()) == pytest.approx(MU, abs=0.01)
    assert float(samples.std()) == pytest.approx(S, abs=0.01)
    coarse = module.sample(16, steps=4, generator=torch.Generator().manual_seed(0))
    assert abs(float(coarse.std()) - S) > abs(float(samples.std()) - S)  # the error falls with the steps


def test_sample_follows_the_solver_on_the_karras_grid_with_churn():
    module = EDM(
        GaussianF(), sample_shape=(1, 4, 4), sampling=EDMSampling(steps=6, s_churn=5.0, s_noise=1.01)
    )
    module.sampling = module.sampling.replace(sigma_min=0.01, sigma_max=20.0, rho=5.0)
    x = module.sample(3, generator=torch.Generator().manual_seed(2))
    expected = heun_sample(
        module.denoiser(),
        (3, 1, 4, 4),
        karras_sigmas(6, 0.01, 20.0, 5.0),
        s_churn=5.0,
        s_noise=1.01,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(x, expected.clamp(-1, 1))
    assert "s_churn" in module.sampling_settings() and module.sampling_settings()["sigma_max"] == 20.0


def test_guidance_zero_is_the_conditional_model_and_w_follows_eq_6():
    net = GaussianF(mean_of_label=lambda y: y.float() / 20)
    module = EDM(net, sample_shape=(1, 4, 4), num_classes=10, sampling=EDMSampling(steps=4))
    y = torch.tensor([2, 7, 9])
    x, t = torch.randn(3, 1, 4, 4), torch.full((3,), 400.0)
    torch.testing.assert_close(module._model_fn(y, 0.0)(x, t), net(x, t, y))
    guided = module._model_fn(y, 2.0)(x, t)
    assert torch.equal(net.seen[-1], torch.tensor([2, 7, 9, 10, 10, 10]))  # one batched pass, null second
    torch.testing.assert_close(guided, 3 * net(x, t, y) - 2 * net(x, t, torch.full_like(y, 10)))
    plain = module.sample(3, cond=y, guidance_scale=0.0, generator=torch.Generator().manual_seed(1))
    direct = heun_sample(
        lambda x, s: edm_denoise(
            net(x * edm_preconditioning(s, SD)[2], torch.full((3,), edm_net_time(s)), y), x, s, SD
        ),
        (3, 1, 4, 4),
        module.sigma_grid(4),
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(plain, direct.clamp(-1, 1))
    module.sample(2, generator=torch.Generator().manual_seed(1))  # no labels: the null label, as int64
    assert net.seen[-1].dtype == torch.long and bool((net.seen[-1] == 10).all())


def test_unknown_sampler_and_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="set model.sampling.sampler to euler, heun, dpm_solver\\+\\+"):
        EDM(GaussianF(), sample_shape=(1, 4, 4)).sample(1, sampler="ddim")
    with pytest.raises(ConfigError, match="model.sigma_data=0 must be positive"):
        EDM(GaussianF(), sample_shape=(1, 4, 4), sigma_data=0)
    with pytest.raises(ConfigError, match=r"in_channels=1 .* sample_shape=\[3, 28, 28\]"):
        EDM(UNet(in_channels=1, **TINY), sample_shape=(3, 28, 28))


# ---------------------------------------------------------------------- training and checkpoints


def test_training_on_bundled_mnist_lowers_the_loss(tmp_path):
    data = MNIST5k(batch_size=16)
    module = _edm(num_classes=10)
    trainer = quiet_trainer(tmp_path, max_steps=25, limit_val_batches=2, val_check_interval=25)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    # a zero-output net: loss = E[target^2], 1 for data of std sigma_data, 1.7 for MNIST (mostly -1)
    assert 1.0 < before["val/loss"] < 2.5 and "val/mse" in before
    assert after["val/loss"] < 0.75 * before["val/loss"], (before, after)
    assert after == trainer.validate(module, datamodule=data, verbose=False)[0]  # fixed sigma and noise


def test_label_dropout_feeds_the_null_label():
    net = GaussianF(mean_of_label=lambda y: y.float() / 20)
    module = EDM(net, sample_shape=(1, 4, 4), num_classes=10, p_uncond=1.0)
    module.training_step((torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])), 0)
    assert torch.equal(net.seen[-1], torch.full((4,), 10))


def test_checkpoint_round_trip_restores_weights_and_samples(tmp_path):
    module = _edm(num_classes=10, sampling=EDMSampling(steps=3), warmup_steps=5, sigma_data=0.6)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=MNIST5k(batch_size=8))
    path = tmp_path / "edm.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain values only
    hparams = checkpoint["hyper_parameters"]
    assert hparams["sigma_data"] == 0.6 and hparams["p_mean"] == -1.2 and hparams["autoencoder"] is None
    assert not {"net", "optimizer", "sampling"} & set(hparams)  # the sampling settings: from the command line
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2  # the warm-up is saved

    net = UNet(in_channels=1, num_classes=10, dropout=0.0, **TINY)
    loaded = EDM.load_from_checkpoint(path, net=net, weights_only=True, sampling=EDMSampling(steps=3))
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.hparams.sigma_data == 0.6 and loaded.sampling == EDMSampling(steps=3)
    cond = torch.tensor([1, 5])
    a = module.sample(2, cond=cond, generator=torch.Generator().manual_seed(4))
    b = loaded.sample(2, cond=cond, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    tested = quiet_trainer(tmp_path, limit_test_batches=1).test(loaded, MNIST5k(batch_size=8), verbose=False)[
        0
    ]
    assert set(tested) == {"test/loss", "test/mse"} and tested["test/loss"] > 0


# ---------------------------------------------------------------------- latent space


def test_latent_edm_denoises_latents_and_samples_images(ae_checkpoint):
    net = UNet(
        in_channels=2, base_channels=8, channel_mult=(1,), attention_levels=(), num_groups=4, num_classes=10
    )
    module = EDM(
        net, sample_shape=(1, 28, 28), num_classes=10, sigma_data=1.0, autoencoder=str(ae_checkpoint)
    )
    assert module.net_shape == (2, 7, 7) and module.sample_shape == (1, 28, 28)
    data = MNIST5k(batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in module.net.parameters())
    assert not any(p.requires_grad for p in module.first_stage.parameters())
    assert {id(p) for p in module.configure_optimizers().param_groups[0]["params"]} == {
        id(p) for p in module.net.parameters()
    }
    x = module.sample(2, cond=torch.tensor([0, 1]), steps=2, generator=torch.Generator().manual_seed(0))
    latents = heun_sample(
        module.denoiser(torch.tensor([0, 1])),
        (2, 2, 7, 7),
        module.sigma_grid(2),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(x, module.first_stage.decode(latents).clamp(-1, 1))


def test_latent_diffusion_refuses_the_pixel_bound_and_skips_it_in_test(ae_checkpoint, tmp_path):
    from lit_genai.diffusion import Diffusion

    net = UNet(in_channels=2, base_channels=8, channel_mult=(1,), attention_levels=(), num_groups=4)
    options = dict(sample_shape=(1, 28, 28), num_timesteps=50, autoencoder=str(ae_checkpoint))
    with pytest.raises(
        ConfigError, match="model.bpd_timesteps=3 asks for val/bpd.*set model.bpd_timesteps: 0"
    ):
        Diffusion(net, bpd_timesteps=3, **options)
    module = Diffusion(net, **options)
    assert module.test_bpd_timesteps > 0  # the default, skipped for latents
    tested = quiet_trainer(tmp_path, limit_test_batches=1).test(module, MNIST5k(batch_size=4), verbose=False)[
        0
    ]
    assert set(tested) == {"test/loss"}
