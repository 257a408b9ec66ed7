"""Latent diffusion: the frozen first stage (FirstStage) of a KL autoencoder's checkpoint, and
Diffusion(autoencoder=...) on its latents."""

import warnings
from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer, tiny_conditional_diffusion
from test_autoencoder import tiny_kl, tiny_vqvae
from torch import nn

from lit_genai.data import MNIST5k
from lit_genai.diffusion import Diffusion, DiffusionSampling
from lit_genai.diffusion.latent import FirstStage, latent_std
from lit_genai.diffusion.sampling import ddim_sample
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.pretrained import load_pretrained
from lit_genai.vae.autoencoder import KLAutoencoder

KEY = "model.autoencoder"


def _fit_and_save(module, folder: Path, name: str, val_batches: int = 1, seed: int = 0) -> Path:
    """``module`` fitted 2 steps on MNIST5k by a Trainer, then saved as ``lit-genai fit`` saves it."""
    torch.manual_seed(seed)
    trainer = quiet_trainer(folder, max_steps=2, limit_train_batches=2, limit_val_batches=val_batches)
    trainer.fit(module, datamodule=MNIST5k(batch_size=16))
    path = folder / name
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def other_ae_checkpoint(tmp_path_factory) -> Path:
    """Another tiny KL autoencoder of the same architecture: other weights."""
    torch.manual_seed(1)
    return _fit_and_save(tiny_kl(), tmp_path_factory.mktemp("kl_other"), "kl.ckpt", seed=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = MNIST5k(batch_size=8)
    data.setup("fit")
    return next(iter(data.val_dataloader()))[0]  # (8, 1, 28, 28) in [-1, 1]


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{KEY}=")
    return text


# ---------------------------------------------------------------------- FirstStage alone


def test_first_stage_encodes_scaled_posterior_means_and_round_trips_like_the_autoencoder(
    ae_checkpoint, images
):
    stage = FirstStage(str(ae_checkpoint), (1, 28, 28))
    ae = load_pretrained(str(ae_checkpoint), KLAutoencoder, KEY)
    assert stage.image_shape == (1, 28, 28) and stage.latent_shape == (2, 7, 7)
    assert stage.scale_factor == ae.scale_factor.item() != 1.0
    z = stage.encode(images)
    with torch.no_grad():
        mean = ae.encoder(images).chunk(2, dim=1)[0]  # (8, 2, 7, 7)
    assert z.shape == (8, 2, 7, 7)
    torch.testing.assert_close(z, mean * ae.scale_factor, rtol=0, atol=0)
    x = stage.decode(z)
    assert x.shape == images.shape and -1 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, ae.reconstruct(images), rtol=0, atol=0)


def test_first_stage_is_frozen_stays_in_eval_mode_and_has_nothing_to_optimise(ae_checkpoint, images):
    holder = nn.Module()
    holder.net = nn.Linear(2, 2)
    holder.first_stage = FirstStage(str(ae_checkpoint), (1, 28, 28))
    assert not any(m.training for m in holder.first_stage.modules())  # from the start
    holder.train()  # what Lightning does at the start of every training epoch
    assert holder.training and holder.net.training
    assert not any(m.training for m in holder.first_stage.modules())
    assert not any(p.requires_grad for p in holder.first_stage.parameters())
    trainable = [p for p in holder.parameters() if p.requires_grad]
    assert [id(p) for p in trainable] == [id(p) for p in holder.net.parameters()]
    x = images.clone().requires_grad_(True)
    assert not holder.first_stage.encode(x).requires_grad  # no graph through the first stage


def test_first_stage_weights_travel_in_the_holders_state_dict(ae_checkpoint, other_ae_checkpoint, images):
    fitted = FirstStage(str(ae_checkpoint), (1, 28, 28))
    state = nn.ModuleDict({"first_stage": fitted}).state_dict()
    assert "first_stage.autoencoder.scale_factor" in state
    assert {k for k in state if k.startswith("first_stage.autoencoder.encoder.")}

    # the same file: loading is silent and changes nothing
    same = nn.ModuleDict({"first_stage": FirstStage(str(ae_checkpoint), (1, 28, 28))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state)

    # the file changed since the fit: a warning, and the saved first stage wins
    changed = nn.ModuleDict({"first_stage": FirstStage(str(other_ae_checkpoint), (1, 28, 28))})
    assert not torch.equal(changed["first_stage"].encode(images), fitted.encode(images))
    with pytest.warns(UserWarning, match="holds other weights than the first stage saved"):
        changed.load_state_dict(state)
    assert torch.equal(changed["first_stage"].encode(images), fitted.encode(images))
    assert changed["first_stage"].scale_factor == fitted.scale_factor
    assert not any(p.requires_grad for p in changed.parameters())


def test_a_file_whose_architecture_no_longer_fits_the_saved_first_stage_is_one_line(ae_checkpoint, tmp_path):
    state = nn.ModuleDict({"first_stage": FirstStage(str(ae_checkpoint), (1, 28, 28))}).state_dict()
    kw = dict(image_size=28, latent_channels=2, base_channels=16, channel_mult=(1, 2), num_groups=4)
    wider = KLAutoencoder(Encoder(1, double_latent=True, **kw), Decoder(1, **kw), sample_shape=(1, 28, 28))
    wider = _fit_and_save(wider, tmp_path, "wide.ckpt")  # the same 2x7x7 latents, twice as wide
    holder = nn.ModuleDict({"first_stage": FirstStage(str(wider), (1, 28, 28))})
    with pytest.raises(ConfigError, match="does not fit the first stage saved in this checkpoint") as error:
        holder.load_state_dict(state)
    _one_line(error)


def test_an_autoencoder_of_other_images_is_one_line(ae_checkpoint):
    with pytest.raises(ConfigError, match=r"trained on images of shape \[1, 28, 28\] but the data gives"):
        FirstStage(str(ae_checkpoint), (3, 32, 32))
    with pytest.raises(ConfigError) as error:
        FirstStage(str(ae_checkpoint), (3, 32, 32))
    assert "train an autoencoder on these images" in _one_line(error)


def _with_class_path(path: Path, class_path: str) -> Path:
    """The checkpoint as ``lit-genai fit`` writes it: the module's class path in its hyperparameters."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = class_path
    out = path.with_name(f"cli-{path.name}")
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("vqvae", "not a KL autoencoder checkpoint .*double_latent"),
        ("vqvae_cli", "a checkpoint of lit_genai.vae.vqvae.VQVAE, not a KLAutoencoder checkpoint"),
        ("diffusion", "its hyperparameters have no encoder network"),
        ("diffusion_cli", "a checkpoint of lit_genai.diffusion.Diffusion, not a KLAutoencoder"),
        ("random", "not a checkpoint"),
        ("missing", "no such checkpoint file"),
    ],
)
def test_a_checkpoint_of_another_kind_is_one_line(kind, message, tmp_path):
    if kind.startswith("vqvae"):
        path = _fit_and_save(tiny_vqvae(), tmp_path, "vq.ckpt")
    elif kind.startswith("diffusion"):
        path = _fit_and_save(tiny_conditional_diffusion(), tmp_path, "diffusion.ckpt", val_batches=0)
    else:
        path = tmp_path / "random.ckpt"
        if kind == "random":
            path.write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8).numpy().tobytes())
    if kind.endswith("_cli"):
        name = "lit_genai.vae.vqvae.VQVAE" if kind == "vqvae_cli" else "lit_genai.diffusion.Diffusion"
        path = _with_class_path(path, name)
    with pytest.raises(ConfigError, match=message) as error:
        FirstStage(str(path), (1, 28, 28))
    _one_line(error)


def test_an_autoencoder_whose_scale_was_never_estimated_warns(tmp_path):
    path = _fit_and_save(tiny_kl(), tmp_path, "kl.ckpt", val_batches=0)  # no validation: scale 1.0
    with pytest.warns(UserWarning, match="scale_factor is 1.0, as if never estimated"):
        FirstStage(str(path), (1, 28, 28))


# ---------------------------------------------------------------------- latent_std


def test_latent_std_is_the_std_of_all_latent_values_of_the_first_batches(ae_checkpoint):
    batches = [(torch.randn(5, 1, 28, 28) * 0.3, torch.zeros(5, dtype=torch.long)) for _ in range(4)]
    # a linear "encoder": the std of 3x the first three batches together, unbiased
    expected = torch.cat([3 * b[0].flatten() for b in batches[:3]]).double().std().item()
    assert latent_std(lambda x: 3 * x, batches, num_batches=3) == pytest.approx(expected, rel=1e-12)
    stage = FirstStage(str(ae_checkpoint), (1, 28, 28))
    images = [b[0].clamp(-1, 1) for b in batches]  # plain tensors are batches too
    expected = torch.cat([stage.encode(x).flatten() for x in images]).double().std().item()
    assert latent_std(stage.encode, images) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="got 0 latent values"):
        latent_std(stage.encode, [])


# ---------------------------------------------------------------------- Diffusion(autoencoder=...)


def tiny_latent_diffusion(autoencoder: Path, **kwargs) -> Diffusion:
    """A class-conditional Diffusion on the 2x7x7 latents of the tiny autoencoder: one-level UNet
    (7 is odd: no downsampling), v-prediction on the cosine schedule, 50 steps; 3 DDIM steps to sample."""
    net = UNet(
        in_channels=2,
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_groups=4,
        num_classes=10,
    )
    options = dict(sample_shape=(1, 28, 28), num_classes=10, num_timesteps=50)
    options["sampling"] = DiffusionSampling(steps=3)
    options.update(prediction="v", beta_schedule="cosine", autoencoder=str(autoencoder))
    options["optimizer"] = lambda params: torch.optim.Adam(params, lr=3e-3)
    return Diffusion(net, **{**options, **kwargs})


def test_latent_diffusion_models_the_first_stages_latents(ae_checkpoint, images):
    model = tiny_latent_diffusion(ae_checkpoint)
    assert model.sample_shape == (1, 28, 28) and model.net_shape == (2, 7, 7)
    ae = load_pretrained(str(ae_checkpoint), KLAutoencoder, KEY)
    z = model._encode_batch(images)  # what training and validation diffuse
    torch.testing.assert_close(z, ae.encode(images), rtol=0, atol=0)
    torch.testing.assert_close(model._to_images(z), ae.reconstruct(images), rtol=0, atol=0)
    assert model.hparams.autoencoder == str(ae_checkpoint)  # a plain path in the hyperparameters


def test_latent_diffusion_trains_its_net_only(ae_checkpoint, tmp_path):
    model, data = tiny_latent_diffusion(ae_checkpoint), MNIST5k(batch_size=32)
    frozen = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    net_before = {k: v.clone() for k, v in model.net.state_dict().items()}

    # one step by hand: gradients reach the net only
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in model.net.parameters())
    assert all(p.grad is None for p in model.first_stage.parameters())
    model.zero_grad(set_to_none=True)

    trainer = quiet_trainer(tmp_path, max_steps=40, limit_train_batches=40, limit_val_batches=2)
    before = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(model, datamodule=data)
    after = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    assert after < 0.8 * before, (before, after)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.net.parameters()}
    assert not model.first_stage.training and not any(m.training for m in model.first_stage.modules())
    for k, v in model.first_stage.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(v, net_before[k]) for k, v in model.net.state_dict().items())


def test_latent_samples_are_decoded_latents_of_the_sampler(ae_checkpoint):
    model = tiny_latent_diffusion(ae_checkpoint, sampling=DiffusionSampling(steps=3, guidance_scale=1.0))
    cond = torch.arange(4)
    x = model.sample(4, cond=cond, generator=torch.Generator().manual_seed(3))
    assert x.shape == (4, 1, 28, 28) and -1 <= x.min() and x.max() <= 1
    # the sampler runs in latent space (no clipping to [-1, 1] there), then the decoder
    latents = ddim_sample(
        model._model_fn(cond, 1.0),
        (4, 2, 7, 7),
        model.alpha_bar,
        steps=3,
        prediction="v",
        clip_denoised=False,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(x, model.first_stage.decode(latents).clamp(-1, 1), rtol=1e-5, atol=1e-5)
    again = model.sample(4, cond=cond, generator=torch.Generator().manual_seed(3), sampler="heun", steps=2)
    assert again.shape == x.shape and -1 <= again.min() and again.max() <= 1


def test_latent_diffusion_checkpoint_round_trip_keeps_the_trained_first_stage(
    ae_checkpoint, other_ae_checkpoint, tmp_path
):
    autoencoder = tmp_path / "ae.ckpt"
    autoencoder.write_bytes(ae_checkpoint.read_bytes())
    model = tiny_latent_diffusion(autoencoder)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=0)
    data = MNIST5k(batch_size=4, predict_samples=4)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "latent.ckpt")
    state = torch.load(tmp_path / "latent.ckpt", weights_only=True)["state_dict"]
    assert "first_stage.autoencoder.scale_factor" in state  # the first stage travels with the net
    expected = torch.cat(trainer.predict(model, datamodule=data))  # (4, 1, 28, 28)

    # the autoencoder file is retrained after the fit: the checkpoint's first stage is used
    autoencoder.write_bytes(other_ae_checkpoint.read_bytes())
    fresh = tiny_latent_diffusion(autoencoder)
    with pytest.warns(UserWarning, match="holds other weights than the first stage saved"):
        predicted = quiet_trainer(tmp_path).predict(
            fresh, datamodule=data, ckpt_path=tmp_path / "latent.ckpt"
        )
    torch.testing.assert_close(torch.cat(predicted), expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in fresh.first_stage.parameters())


def test_latent_diffusion_with_the_wrong_first_stage_is_one_line(ae_checkpoint, tmp_path):
    with pytest.raises(
        ConfigError, match=r"trained on images of shape \[1, 28, 28\] but the data gives"
    ) as e:
        tiny_latent_diffusion(ae_checkpoint, sample_shape=(3, 32, 32))
    _one_line(e)
    vq = _fit_and_save(tiny_vqvae(), tmp_path, "vq.ckpt")
    with pytest.raises(ConfigError, match="not a KL autoencoder checkpoint") as e:
        tiny_latent_diffusion(vq)
    _one_line(e)
    net = UNet(in_channels=1, base_channels=8, channel_mult=(1,), attention_levels=(), num_groups=4)
    with pytest.raises(ConfigError, match=r"model.net.in_channels=1 but .* has 2 channel") as e:
        Diffusion(net, sample_shape=(1, 28, 28), autoencoder=str(ae_checkpoint))
    assert "\n" not in str(e.value)
