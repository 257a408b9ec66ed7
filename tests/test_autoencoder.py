"""Spatial encoder / decoder, the VQ-VAE module and the KL autoencoder of latent diffusion."""

import warnings

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import LightningModule
from torch import nn

from lit_genai.data import Digits, MNIST5k
from lit_genai.errors import ConfigError
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.pretrained import load_pretrained, network_config
from lit_genai.vae.autoencoder import KLAutoencoder
from lit_genai.vae.vqvae import VQVAE

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4)


def tiny_vqvae(image_size: int = 28, num_codes: int = 32, **quantizer) -> VQVAE:
    kw = dict(image_size=image_size, latent_channels=4, **TINY)
    return VQVAE(
        Encoder(1, **kw),
        Decoder(1, **kw),
        VectorQuantizer(num_codes, 4, **{"dead_code_threshold": 0.5, **quantizer}),
        sample_shape=(1, image_size, image_size),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )


def tiny_kl(**kwargs) -> KLAutoencoder:
    kw = dict(image_size=28, latent_channels=2, **TINY)
    return KLAutoencoder(
        Encoder(1, double_latent=True, **kw),
        Decoder(1, **kw),
        sample_shape=(1, 28, 28),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        **kwargs,
    )


# ---------------------------------------------------------------------- networks


@pytest.mark.parametrize(("size", "mult", "latent"), [(28, (1, 2), 7), (32, (1, 2, 2), 4), (8, (1,), 4)])
def test_encoder_and_decoder_shapes(size, mult, latent):
    enc = Encoder(3, size, base_channels=8, channel_mult=mult, latent_channels=5, num_groups=4)
    dec = Decoder(3, size, base_channels=8, channel_mult=mult, latent_channels=5, num_groups=4)
    assert enc.downsample == dec.downsample == 2 ** len(mult) and enc.latent_size == latent
    x = torch.randn(2, 3, size, size)
    z = enc(x)
    assert z.shape == (2, 5, latent, latent)
    assert dec(z).shape == x.shape
    double = Encoder(3, size, base_channels=8, channel_mult=mult, latent_channels=5, double_latent=True)
    assert double(x).shape == (2, 10, latent, latent)
    for norm, act in (("batch", "relu"), ("none", "relu")):  # VQ-VAE's layout has no normalisation
        assert Encoder(3, size, 8, mult, latent_channels=5, norm=norm, activation=act)(x).shape == z.shape


def test_image_size_that_the_stages_do_not_divide_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"image_size=28 is not divisible by 2\*\*len\(channel_mult\)=8"):
        Encoder(1, 28, channel_mult=(1, 2, 2))


def test_networks_are_recorded_as_plain_config():
    enc = Encoder(1, 28, latent_channels=3, **TINY)
    config = network_config(enc)
    assert config["class_path"] == "lit_genai.nn.autoencoder.Encoder"
    rebuilt = Encoder(**config["init_args"])
    assert all(
        a.shape == b.shape
        for a, b in zip(enc.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )
    assert network_config(torch.nn.Linear(2, 3)) is None  # in_features kept, but not bias: no config


# ---------------------------------------------------------------------- VQ-VAE


def test_vqvae_contract_shapes_and_round_trip():
    model = tiny_vqvae().eval()
    assert model.latent_space == "discrete" and model.vocab_size == 32 and model.token_shape == (7, 7)
    assert not hasattr(model, "sample")  # a tokenizer, not a generative module
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    ids = model.encode(x)
    assert ids.shape == (3, 7, 7) and ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 32
    images = model.decode(ids)
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    assert torch.equal(model.decode(ids.flatten(1)), images)  # raster-order (B, h*w) ids too
    assert torch.allclose(model.reconstruct(x), images, atol=1e-5)  # z_e + (e - z_e) rounds
    # per_example_loss: the objective per example, differentiable w.r.t. x, codebook untouched
    model.train()
    before = model.quantizer.cluster_size.clone()
    x.requires_grad_()
    loss = model.per_example_loss(x)
    assert loss.shape == (3,)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert grad.abs().sum() > 0 and torch.equal(model.quantizer.cluster_size, before)
    with torch.no_grad():
        z_e = model.encoder(x)
        codes = model.quantizer.lookup(model.encode(x))
        rec = (model.decoder(codes) - x).pow(2).mean((1, 2, 3))
        expected = rec + 0.25 * (z_e - codes).pow(2).mean((1, 2, 3))  # EMA: no codebook term
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_vqvae_checks_its_networks_against_the_data_and_each_other():
    kw = dict(image_size=28, latent_channels=4, **TINY)
    with pytest.raises(ConfigError, match="model.encoder.in_channels=3 but the data's sample_shape"):
        VQVAE(Encoder(3, **kw), Decoder(1, **kw), VectorQuantizer(8, 4), sample_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="model.decoder.out_channels=3"):
        VQVAE(Encoder(1, **kw), Decoder(3, **kw), VectorQuantizer(8, 4), sample_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"model.encoder.latent_channels=4 but model.quantizer.code_dim=6"):
        VQVAE(Encoder(1, **kw), Decoder(1, **kw), VectorQuantizer(8, 6), sample_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="double_latent"):
        VQVAE(
            Encoder(1, double_latent=True, **kw),
            Decoder(1, **kw),
            VectorQuantizer(8, 4),
            sample_shape=(1, 28, 28),
        )


def test_vqvae_short_cpu_run_on_mnist5k_lowers_the_validation_loss(tmp_path):
    model, data = tiny_vqvae(), MNIST5k(batch_size=32)
    trainer = quiet_trainer(tmp_path, max_steps=40, limit_val_batches=2)
    before = trainer.validate(model, datamodule=data, verbose=False)[0]
    trainer.fit(model, datamodule=data)
    logged = set(trainer.callback_metrics)
    assert {"train/loss", "train/rec", "train/commitment", "train/perplexity", "train/usage"} <= logged
    after = trainer.validate(model, datamodule=data, verbose=False)[0]
    assert set(before) == {"val/loss", "val/mse", "val/commitment", "val/perplexity", "val/usage"}
    assert after["val/loss"] < 0.5 * before["val/loss"]
    assert after["val/mse"] < 0.5 * before["val/mse"]
    assert 1 < after["val/perplexity"] <= 32 and 0 < after["val/usage"] <= 1


def test_vqvae_python_checkpoint_reloads_with_weights_only(tmp_path):
    model, data = tiny_vqvae(image_size=8, ema=False), Digits(batch_size=32)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "vq.ckpt")
    loaded = load_pretrained(str(tmp_path / "vq.ckpt"), VQVAE, "tokenizer")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    model.eval()
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)
    assert loaded.quantizer.ema is False and loaded.token_shape == (2, 2)


class LinearModule(LightningModule):
    """A module with one network, rebuilt by ``load_pretrained`` like an autoencoder's, but no
    ``encode`` / ``decode``: it does not keep the Autoencoder protocol."""

    network_args = ("net",)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


def test_load_pretrained_refuses_a_module_that_does_not_keep_the_autoencoder_protocol(tmp_path):
    net = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 2}}
    state = LinearModule(nn.Linear(2, 2)).state_dict()
    torch.save({"state_dict": state, "hyper_parameters": {"net": net}}, tmp_path / "linear.ckpt")
    with pytest.raises(
        ConfigError, match=r"^first_stage=.*linear.ckpt: a LinearModule does not keep the Autoencoder"
    ):
        load_pretrained(str(tmp_path / "linear.ckpt"), LinearModule, "first_stage")


# ---------------------------------------------------------------------- KL autoencoder


def _first_val_latents(model: KLAutoencoder, data: MNIST5k, batches: int) -> torch.Tensor:
    """Scaled posterior samples of the first validation batches, with the validation's noise."""
    model.eval()
    with torch.no_grad():
        loader = iter(data.val_dataloader())
        return torch.cat(
            [
                model.encode(
                    next(loader)[0], sample=True, generator=torch.Generator().manual_seed(i)
                ).flatten()
                for i in range(batches)
            ]
        )


def test_kl_autoencoder_scale_factor_from_data_is_saved_and_kept_on_resume(tmp_path):
    model, data = tiny_kl(scale_batches=2), MNIST5k(batch_size=50)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=5, limit_val_batches=3)
    trainer.fit(model, datamodule=data)
    scale = model.scale_factor.item()
    assert scale != 1.0
    assert _first_val_latents(model, data, 2).std().item() == pytest.approx(1.0, abs=1e-4)
    assert "val/scale_factor" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "kl.ckpt")
    saved = torch.load(tmp_path / "kl.ckpt", weights_only=True)
    assert saved["state_dict"]["scale_factor"].item() == scale

    # a resumed run starts from the saved value (a fresh module has 1.0) and keeps it without validation
    resumed = tiny_kl(scale_batches=2)
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=5, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "never estimated" warning either
        warnings.filterwarnings("ignore", message="(?!KLAutoencoder)")
        trainer.fit(resumed, datamodule=data, ckpt_path=tmp_path / "kl.ckpt")
    assert resumed.scale_factor.item() == scale
    loaded = load_pretrained(str(tmp_path / "kl.ckpt"), KLAutoencoder, "first_stage")
    assert loaded.scale_factor.item() == scale


def test_kl_autoencoder_given_scale_factor_is_kept_and_round_trip_cancels_it(tmp_path):
    model, data = tiny_kl(scale_factor=0.25, scale_batches=2), MNIST5k(batch_size=50)
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2).fit(
        model, datamodule=data
    )
    assert model.scale_factor.item() == 0.25
    model.eval()
    assert model.latent_space == "continuous" and model.latent_shape == (2, 7, 7)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        mean, _ = model.posterior(x)
        z = model.encode(x)
        assert z.shape == (3, 2, 7, 7) and torch.allclose(z, 0.25 * mean)
        assert torch.allclose(model.decode(z), model.decoder(mean).clamp(-1, 1), atol=1e-6)
        assert torch.allclose(model.reconstruct(x), model.decode(z))
        # a posterior sample from a generator is reproducible and differs from the mean
        g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        assert torch.equal(
            model.encode(x, sample=True, generator=g()), model.encode(x, sample=True, generator=g())
        )
        assert not torch.allclose(model.encode(x, sample=True, generator=g()), z)


def test_kl_autoencoder_loss_terms_by_hand():
    model = tiny_kl(kl_weight=0.5, rec_loss="mse")
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    torch.manual_seed(5)
    loss = model.per_example_loss(x)
    torch.manual_seed(5)
    mean, logvar = model.posterior(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    rec = (model.decoder(z) - x).pow(2).flatten(1).sum(1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    assert torch.allclose(loss, rec + 0.5 * kl, rtol=1e-5)


def test_kl_autoencoder_needs_mean_and_logvar():
    kw = dict(image_size=28, latent_channels=2, **TINY)
    with pytest.raises(ConfigError, match="set model.encoder.init_args.double_latent: true"):
        KLAutoencoder(Encoder(1, **kw), Decoder(1, **kw), sample_shape=(1, 28, 28))
