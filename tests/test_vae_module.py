"""The VAE module: training improves the bound, IWAE estimates, warm-up, free bits, conditioning, errors."""

import functools
import json
import math

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import Callback
from torch import distributions as dist
from torch import nn

from lit_genai import paradigm
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.data import MNIST5k
from lit_genai.data.binarize import binarize
from lit_genai.errors import ConfigError
from lit_genai.nn.vae import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from lit_genai.vae import VAE
from lit_genai.vae.module import EVALUATION_SETTINGS, VAESampling


def small_vae(latent_dim=8, num_classes=0, **kwargs) -> VAE:
    kwargs.setdefault("likelihood", "bernoulli")
    if kwargs["likelihood"] == "bernoulli":
        kwargs.setdefault("binarization", "dynamic")
    return VAE(
        MLPEncoder(hidden=[64], latent_dim=latent_dim, num_classes=num_classes),
        MLPDecoder(hidden=[64], latent_dim=latent_dim, num_classes=num_classes),
        num_classes=num_classes,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        **kwargs,
    )


@pytest.fixture(scope="module")
def batch():
    dm = MNIST5k(batch_size=32)
    dm.setup("fit")
    x, y = dm.val_set.tensors
    return x[:32], y[:32]  # (32, 1, 28, 28) grey in [-1, 1], (32,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small Bernoulli VAE, validated before and after 40 training steps on MNIST5k."""
    torch.manual_seed(0)
    model = small_vae(latent_dim=16, val_importance_samples=0, test_importance_samples=0)
    dm = MNIST5k(batch_size=100)
    trainer = quiet_trainer(tmp_path_factory.mktemp("vae"), max_steps=40, limit_val_batches=2)
    before = trainer.validate(model, dm, verbose=False)[0]["val/loss"]
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]["val/loss"]
    return model, before, after


# ---------------------------------------------------------------------- training and the bounds


def test_a_short_run_improves_the_validation_bound(trained):
    model, before, after = trained
    assert before > 500  # about 784 ln 2 = 543 nats at initialisation
    assert after < before - 200, (before, after)


def test_validation_is_not_dice(trained, tmp_path):
    model, _, _ = trained
    trainer = quiet_trainer(tmp_path, limit_val_batches=2)
    dm = MNIST5k(batch_size=100)
    first = trainer.validate(model, dm, verbose=False)[0]
    second = trainer.validate(model, dm, verbose=False)[0]
    assert first == second  # binarisation and z noise seeded by the batch index


def test_iwae_with_one_sample_is_the_elbo_under_the_same_noise(trained, batch):
    model, _, _ = trained
    x = binarize(batch[0], "static")
    B = len(x)
    one = -model.importance_nll(x, num_samples=1, generator=torch.Generator().manual_seed(3))  # (B,)
    eps = torch.randn((1, B, model.latent_dim), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        terms = model._terms(x, None, eps, weights=True)
    single = terms["log_w"][0]  # log p(x|z) + log p(z) - log q(z|x) at the same z
    assert torch.allclose(one, single, atol=1e-4)
    # averaged over draws, the k = 1 bound is the ELBO with the analytic KL
    many = torch.stack([-model.importance_nll(x, num_samples=1) for _ in range(200)]).mean(0)
    elbo = -(terms["rec"] + terms["kl"])  # one draw of the reconstruction term
    with torch.no_grad():
        eps = torch.randn((400, B, model.latent_dim))
        elbo = -(model._terms(x, None, eps)["rec"] + terms["kl"])  # 400-sample average
    assert torch.allclose(many.mean(), elbo.mean(), atol=1.0)


def test_the_iwae_bound_rises_with_k_above_the_elbo(trained, batch):
    model, _, _ = trained
    x = binarize(batch[0], "static")
    bounds = {}
    for k in (1, 5, 50, 500):  # each bound averaged over 500 / k estimates
        seeds = range(max(1, 500 // k))
        estimates = [
            model.importance_nll(x, num_samples=k, generator=torch.Generator().manual_seed(s)) for s in seeds
        ]
        bounds[k] = -float(torch.stack(estimates).mean())
    with torch.no_grad():
        terms = model._terms(x, None, torch.randn((1000, len(x), model.latent_dim)))
    elbo = float(-(terms["rec"] + terms["kl"]).mean())
    assert bounds[1] == pytest.approx(elbo, abs=0.5)
    assert bounds[1] < bounds[5] < bounds[50] < bounds[500], (elbo, bounds)


def test_chunking_does_not_change_the_estimate_beyond_monte_carlo_noise(trained, batch):
    model, _, _ = trained
    x = binarize(batch[0][:8], "static")
    whole = model.importance_nll(
        x, num_samples=256, generator=torch.Generator().manual_seed(0), chunk_size=256
    )
    chunked = model.importance_nll(
        x, num_samples=256, generator=torch.Generator().manual_seed(0), chunk_size=10
    )
    assert torch.allclose(whole, chunked, atol=0.5)  # different draws; exact equality: test_vae_losses


# ---------------------------------------------------------------------- a linear-Gaussian toy


class LinearDecoder(nn.Module):
    """p(x|z) = N(W z + b, sigma^2 I) on (1, 2, 2) "images"."""

    out_channels, image_size, num_classes = 1, 2, 0

    def __init__(self, W, b):
        super().__init__()
        self.latent_dim = W.shape[1]
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def forward(self, z):
        return (z @ self.W.T + self.b).view(-1, 1, 2, 2)


class LinearEncoder(nn.Module):
    """q(z|x) = N(A (x - b) + shift, exp(logvar)): the exact posterior for shift = 0, logvar exact."""

    in_channels, image_size, num_classes = 1, 2, 0

    def __init__(self, A, b, logvar, shift=0.0):
        super().__init__()
        self.latent_dim = A.shape[0]
        self.A, self.b, self.logvar, self.shift = A, b, logvar, shift

    def forward(self, x):
        mean = (x.flatten(1) - self.b) @ self.A.T + self.shift  # (B, D)
        return mean, self.logvar.expand_as(mean)


@pytest.mark.parametrize("exact", [True, False])
def test_importance_nll_matches_the_analytic_marginal_of_a_linear_gaussian(exact):
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(0)
        Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
        s, sigma = torch.tensor([1.5, 0.7]), 0.5
        W, b = Q[:, :2] * s, torch.randn(4, generator=g) * 0.3  # orthogonal columns: diagonal posterior
        post_var = 1 / (1 + s**2 / sigma**2)  # Sigma = (I + W^T W / sigma^2)^-1
        A = post_var[:, None] * W.T / sigma**2  # mu = Sigma W^T (x - b) / sigma^2
        logvar = post_var.log() + (0.0 if exact else 0.4)
        encoder = LinearEncoder(A, b, logvar, shift=0.0 if exact else 0.3)
        vae = VAE(
            encoder, LinearDecoder(W, b), sample_shape=(1, 2, 2), likelihood="gaussian", gaussian_std=sigma
        )
        x = torch.randn(6, 1, 2, 2, generator=g)
        marginal = dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(4))
        expected = -marginal.log_prob(x.flatten(1))  # (6,)
        k = 1 if exact else 100_000
        nll = vae.importance_nll(
            x, num_samples=k, generator=torch.Generator().manual_seed(1), chunk_size=10_000
        )
        assert torch.allclose(nll, expected, atol=1e-9 if exact else 0.015)
        if not exact:  # a bound: never below the true NLL by more than the noise, and the ELBO is looser
            elbo = vae.importance_nll(x, num_samples=1, generator=torch.Generator().manual_seed(2))
            assert (nll >= expected - 0.015).all() and (elbo > nll).float().mean() > 0.5
    finally:
        torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------------- warm-up, free bits, objective


class KLWeights(Callback):
    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(float(trainer.callback_metrics["train/kl_weight"]))


def test_kl_warm_up_rises_linearly_to_beta_over_the_steps(tmp_path):
    model = small_vae(beta=2.0, kl_warmup_steps=4)
    recorder = KLWeights()
    trainer = quiet_trainer(
        tmp_path, callbacks=[recorder], max_steps=6, limit_val_batches=0, log_every_n_steps=1
    )
    trainer.fit(model, MNIST5k(batch_size=16))
    assert recorder.weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def _grads(model, batch, seed=0):
    torch.manual_seed(seed)
    model.zero_grad()
    model.training_step(batch, 0).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_free_bits_stop_the_kl_gradient_below_lambda(batch):
    torch.manual_seed(0)
    reference = small_vae(beta=0.0)  # reconstruction only
    state = reference.state_dict()
    free = small_vae(free_bits=1000.0)  # every dimension's KL is far below 1000 nats
    plain = small_vae()
    free.load_state_dict(state)
    plain.load_state_dict(state)
    assert torch.allclose(_grads(free, batch), _grads(reference, batch), atol=1e-6)
    assert not torch.allclose(_grads(plain, batch), _grads(reference, batch), atol=1e-4)
    torch.manual_seed(0)
    loss = free.training_step(batch, 0)
    torch.manual_seed(0)
    rec = reference.training_step(batch, 0)
    assert float((loss - rec).detach()) == pytest.approx(8 * 1000.0)  # D lambda


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_iwae_objective_with_one_sample_is_the_single_sample_elbo(batch):
    torch.manual_seed(0)
    iwae = small_vae(objective="iwae", train_samples=1)
    elbo = small_vae()
    elbo.load_state_dict(iwae.state_dict())
    torch.manual_seed(5)
    loss_iwae = iwae.training_step(batch, 0)
    torch.manual_seed(5)
    x = binarize(batch[0], "dynamic", uniform=torch.rand(batch[0].shape))
    eps = torch.randn((len(x), 1, 8)).transpose(0, 1)
    terms = elbo._terms(x, None, eps, weights=True)
    assert float(loss_iwae.detach()) == pytest.approx(float(-terms["log_w"][0].mean().detach()), rel=1e-6)
    k5 = small_vae(objective="iwae", train_samples=5)
    k5.load_state_dict(iwae.state_dict())
    assert math.isfinite(float(k5.training_step(batch, 0).detach()))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_adversarial_training_raises_the_loss_of_the_step(trained, batch):
    clean = small_vae(latent_dim=16)
    attacked = small_vae(latent_dim=16, adversarial_eps=0.3, adversarial_steps=3)
    clean.load_state_dict(trained[0].state_dict())
    attacked.load_state_dict(trained[0].state_dict())
    torch.manual_seed(1)
    clean_loss = float(clean.training_step(batch, 0).detach())
    torch.manual_seed(1)
    attacked_loss = float(attacked.training_step(batch, 0).detach())
    assert attacked_loss > clean_loss + 20
    assert all(p.grad is None for p in attacked.parameters())  # the attack left parameters alone


# ---------------------------------------------------------------------- the contracts


def test_autoencoder_contract_shapes_ranges_and_gradients(batch):
    model = small_vae()
    x, _ = batch
    z = model.encode(x)
    assert z.shape == (32, 8)
    for images in (model.decode(z), model.reconstruct(x)):
        assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    x_in = x.clone().requires_grad_(True)
    loss = model.per_example_loss(x_in)
    assert loss.shape == (32,) and (loss > 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), x_in)
    assert grad.abs().sum() > 0  # differentiable w.r.t. the input (soft Bernoulli targets)
    assert model.latent_space == "continuous" and paradigm.is_generative(model)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "logistic"])
def test_samples_are_images_reproducible_and_drawn_from_the_likelihood(likelihood):
    model = small_vae(likelihood=likelihood)
    a = model.sample(6, generator=torch.Generator().manual_seed(0))
    b = model.sample(6, generator=paradigm.sample_generators(0, range(6)))
    c = model.sample(6, generator=paradigm.sample_generators(0, range(6)))
    assert a.shape == (6, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(b, c)
    alone = model.sample(2, generator=paradigm.sample_generators(0, [4, 5]))
    assert torch.allclose(alone, b[4:], atol=1e-6)  # sample i depends on seed + i, not the batch
    drawn = model.sample(6, generator=torch.Generator().manual_seed(0), mean=False)
    assert drawn.min() >= -1 and drawn.max() <= 1 and not torch.equal(drawn, a)
    if likelihood == "bernoulli":
        assert set(drawn.unique().tolist()) <= {-1.0, 1.0}
    if likelihood == "logistic":  # on the 8-bit grid
        k = (drawn + 1) * 127.5
        assert torch.allclose(k, k.round(), atol=1e-3)


def test_temperature_scales_z_and_zero_gives_the_image_of_the_origin():
    model = small_vae()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    z = torch.randn((4, 8), generator=g())  # the prior draw of sample()
    with torch.no_grad():
        origin = model.decode(torch.zeros(1, 8))  # (1, 1, 28, 28)
        assert torch.allclose(model.sample(4, generator=g()), model.decode(z), atol=1e-6)
        half = model.sample(4, generator=g(), temperature=0.5)
        assert torch.allclose(half, model.decode(0.5 * z), atol=1e-6)  # z = temperature * N(0, I)
    zero = model.sample(4, generator=g(), temperature=0.0)
    assert torch.allclose(zero, origin.expand(4, -1, -1, -1), atol=1e-6)  # every sample: the decoder at z = 0
    model.sampling = model.sampling.replace(temperature=0.5)  # the module's setting, used by predict
    assert torch.equal(model.sample(4, generator=g()), half)


def test_mean_false_draws_pixels_from_the_decoders_bernoulli():
    model = small_vae()
    model.sampling = model.sampling.replace(mean=False, temperature=0.0)  # z = 0: one p(x|z) for all
    drawn = model.sample(4000, generator=torch.Generator().manual_seed(0))  # (4000, 1, 28, 28) in {-1, 1}
    assert set(drawn.unique().tolist()) == {-1.0, 1.0} and not torch.equal(drawn[0], drawn[1])
    with torch.no_grad():
        mean = model.decode(torch.zeros(1, 8))[0]  # 2 p - 1 per pixel
    assert torch.allclose(drawn.mean(0), mean, atol=0.1)  # E[x] = 2 p - 1; 4000 draws: sd <= 0.016
    # one generator per sample: sample i draws its z and its pixels from generator i alone
    rows = model.sample(6, generator=paradigm.sample_generators(3, range(6)), temperature=1.0)
    assert torch.equal(
        rows[4:], model.sample(2, generator=paradigm.sample_generators(3, [4, 5]), temperature=1.0)
    )


class RecordingDecoder(MLPDecoder):
    def forward(self, z, y=None):
        self.labels = y
        return super().forward(z, y)


def test_a_conditional_vae_samples_per_label():
    torch.manual_seed(0)
    decoder = RecordingDecoder(hidden=[64], latent_dim=8, num_classes=10)
    model = VAE(
        MLPEncoder(hidden=[64], latent_dim=8, num_classes=10), decoder, num_classes=10, binarization="dynamic"
    )
    assert model.num_classes == 10
    cond = torch.tensor([3, 3, 7, 7])
    threes = model.sample(4, cond=torch.full((4,), 3), generator=torch.Generator().manual_seed(0))
    mixed = model.sample(4, cond=cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoder.labels, cond)
    assert torch.equal(mixed[:2], threes[:2]) and not torch.allclose(mixed[2:], threes[2:])
    # predict: sample i has label i % num_classes
    model.predict_step(torch.arange(12, 16))
    assert decoder.labels.tolist() == [2, 3, 4, 5]


def test_conv_networks_fit_28_and_32_pixel_images():
    for shape, channels in [((1, 28, 28), [16, 32]), ((3, 32, 32), [16, 32, 64])]:
        C, H, _ = shape
        enc = ConvEncoder(in_channels=C, image_size=H, channels=channels, latent_dim=4, num_classes=10)
        dec = ConvDecoder(out_channels=C, image_size=H, channels=channels, latent_dim=4, num_classes=10)
        model = VAE(enc, dec, sample_shape=shape, num_classes=10, likelihood="logistic")
        x, y = torch.rand(3, *shape) * 2 - 1, torch.tensor([0, 1, 2])
        assert model.encode(x, y).shape == (3, 4)
        assert model.reconstruct(x, y).shape == (3, *shape)
        assert model.per_example_loss(x, y).shape == (3,)
    with pytest.raises(ConfigError, match="not divisible by 2\\^3"):
        ConvEncoder(image_size=28, channels=[8, 16, 32])


# ---------------------------------------------------------------------- configuration errors


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_bernoulli_on_grey_data_without_binarisation_is_one_line(batch):
    model = small_vae(binarization=None)
    with pytest.raises(ConfigError) as error:
        model.training_step(batch, 0)
    message = str(error.value)
    assert "\n" not in message and "model.init_args.binarization" in message
    binary = (binarize(batch[0], "threshold"), batch[1])
    assert torch.isfinite(model.training_step(binary, 0))  # binary data need none


def test_settings_that_do_not_fit_are_one_line_errors():
    with pytest.raises(ConfigError, match="applies to likelihood 'bernoulli' only"):
        small_vae(likelihood="gaussian", binarization="dynamic")
    with pytest.raises(ConfigError, match="gaussian_std"):
        small_vae(likelihood="logistic", gaussian_std=0.1)
    with pytest.raises(ConfigError, match="free_bits"):
        small_vae(objective="iwae", free_bits=0.5)
    with pytest.raises(ConfigError, match="model.encoder.in_channels=3"):
        VAE(MLPEncoder(in_channels=3), MLPDecoder(), binarization="dynamic")
    with pytest.raises(ConfigError, match="model.encoder.init_args.latent_dim: 50"):
        VAE(MLPEncoder(latent_dim=10), MLPDecoder(latent_dim=50), binarization="dynamic")


def test_inference_settings_are_kept_out_of_the_hyperparameters():
    model = small_vae(test_importance_samples=7, sampling=VAESampling(mean=False, temperature=0.7))
    assert "sampling" not in model.hparams and not set(VAESampling.names()) & set(model.hparams)
    assert not set(EVALUATION_SETTINGS) & set(model.hparams)  # evaluation settings: init args, not saved
    assert {"encoder", "decoder", "optimizer"}.isdisjoint(model.hparams)  # objects are not config
    assert model.hparams.likelihood == "bernoulli" and model.test_importance_samples == 7
    assert model.sampling_settings() == {"mean": False, "temperature": 0.7}  # the sampling settings only
    assert model.sampling_settings(temperature=1.0) == {"mean": False, "temperature": 1.0}
    with pytest.raises(
        ConfigError, match="unknown sampling option.* sample_mean .*the options are: mean, temperature"
    ):
        model.sample(1, sample_mean=True)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_test_results_name_the_likelihood_and_the_binarisation(likelihood, tmp_path):
    model = small_vae(likelihood=likelihood, test_importance_samples=10, importance_chunk_size=4)
    trainer = quiet_trainer(tmp_path, callbacks=[Evaluation(at_test=False)], limit_test_batches=1)
    metrics = trainer.test(model, MNIST5k(batch_size=16), verbose=False)[0]
    payload = json.loads((tmp_path / "test.json").read_text())
    protocol = payload["likelihood_protocol"]
    assert protocol["likelihood"] == likelihood and protocol["test_importance_samples"] == 10
    assert protocol["binarization"] == ("dynamic" if likelihood == "bernoulli" else None)
    assert {"test/loss", "test/neg_elbo", "test/rec", "test/kl", "test/nll_nats", "test/bpd"} <= set(metrics)
    D = 784
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll_nats"] / (D * math.log(2)), rel=1e-5)
    if likelihood == "gaussian":  # the 8-bit bound: the continuous NLL of dequantised data + D ln 127.5
        dm = MNIST5k(batch_size=16)
        dm.setup("test")
        x = next(iter(dm.test_dataloader()))[0]
        g = torch.Generator().manual_seed(0)  # the test batch's generator: dequantisation, z, then IWAE
        x = x + (2 * torch.rand(x.shape, generator=g) - 1) / 255
        torch.randn((1, 16, model.latent_dim), generator=g)
        nll = model.importance_nll(x, num_samples=10, generator=g, chunk_size=4).mean()
        assert metrics["test/nll_nats"] == pytest.approx(float(nll) + D * math.log(127.5), rel=1e-5)
