"""ImageTokens: token ids of a frozen VQ-VAE over image data, cached; the tokenizer's checkpoint checks."""

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer
from test_autoencoder import tiny_vqvae

from lit_genai import media
from lit_genai.cli import LitGenAICLI, main
from lit_genai.data import Digits, MNIST5k
from lit_genai.data.tokens import ImageTokens
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.vae.vqvae import VQVAE

ROOT = Path(__file__).resolve().parents[1]
VQVAE_MNIST = str(ROOT / "experiments" / "vae" / "vqvae_mnist.yaml")


def _fit_and_save(folder: Path, image_size: int, data) -> Path:
    torch.manual_seed(0)
    model = tiny_vqvae(image_size=image_size)
    trainer = quiet_trainer(folder, max_steps=5, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    path = folder / "tokenizer.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def mnist_tokenizer(tmp_path_factory) -> Path:
    """A tiny VQ-VAE (32 codes, 7x7 tokens) trained a few steps on MNIST5k, saved by a Trainer."""
    return _fit_and_save(tmp_path_factory.mktemp("mnist_tokenizer"), 28, MNIST5k(batch_size=32))


def test_token_batches_shapes_values_and_attributes(mnist_tokenizer, tmp_path):
    data = ImageTokens(MNIST5k(batch_size=500), str(mnist_tokenizer), batch_size=16, cache_dir=str(tmp_path))
    assert (data.vocab_size, data.block_size, data.token_shape) == (32, 49, (7, 7))  # before any data is read
    assert data.num_classes == 10 and data.feature_extractor == "mnist" and data.image_shape == (1, 28, 28)
    data.setup("fit")
    assert data.encoded and data.cache_path.is_file() and data.cache_path.parent == tmp_path
    assert [len(s) for s in (data.train_set, data.val_set, data.test_set)] == [4000, 500, 500]
    tokens, labels = next(iter(data.train_dataloader()))
    assert tokens.shape == (16, 49) and tokens.dtype == torch.int64
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < 32

    # the val tokens are the tokenizer's ids of the val images, row by row (raster order)
    images = MNIST5k(batch_size=500)
    images.setup("fit")
    x, y = next(iter(images.val_dataloader()))
    expected = data.model.encode(x[:8]).flatten(1)
    val_tokens, val_labels = next(iter(data.val_dataloader()))
    assert torch.equal(val_tokens[:8], expected) and torch.equal(val_labels[:8], y[:8])
    assert list(next(iter(data.predict_dataloader()))) == list(range(16))


def test_the_cache_is_reused_and_keyed_on_the_images(mnist_tokenizer, tmp_path):
    first = ImageTokens(MNIST5k(batch_size=500), str(mnist_tokenizer), cache_dir=str(tmp_path))
    first.setup("fit")
    with mock.patch.object(VQVAE, "encode", side_effect=AssertionError("encoded again")):
        second = ImageTokens(MNIST5k(batch_size=250), str(mnist_tokenizer), cache_dir=str(tmp_path))
        second.setup("fit")  # batch size does not change the images: same cache
        assert not second.encoded and second.cache_path == first.cache_path
        assert torch.equal(second.train_set.tensors[0], first.train_set.tensors[0])
    other = ImageTokens(MNIST5k(batch_size=500, seed=1), str(mnist_tokenizer), cache_dir=str(tmp_path))
    assert other.cache_path != first.cache_path  # another split is another cache
    assert other.identity()["images"]["seed"] == 1 and len(other.identity()["tokenizer"]) == 16


def test_decode_gives_uint8_images_through_the_image_route(mnist_tokenizer, tmp_path):
    data = ImageTokens(MNIST5k(batch_size=500), str(mnist_tokenizer), cache_dir=str(tmp_path))
    data.setup("fit")
    tokens, _ = next(iter(data.val_dataloader()))
    images = data.decode(tokens[:6])
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(images, to_uint8(data.model.decode(tokens[:6].view(6, 7, 7))))
    routed = media.to_media(data, "image", tokens[:6])  # what SampleLogger / SampleWriter call
    assert torch.equal(routed, images)


def test_a_tokenizer_of_another_image_shape_is_one_clear_error(tmp_path):
    path = _fit_and_save(tmp_path, 8, Digits(batch_size=32))  # a 1x8x8 tokenizer
    with pytest.raises(ConfigError) as error:
        ImageTokens(MNIST5k(), str(path))
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"data.init_args.tokenizer={path} was trained on images of shape [1, 8, 8] but "
        "data.init_args.images (MNIST5k) gives [1, 28, 28]: wrap the data it was trained on, "
        "or train a tokenizer on these images"
    )
    assert ImageTokens(Digits(), str(path)).token_shape == (2, 2)  # the data it was trained on


def test_bad_tokenizer_files_are_one_clear_error(mnist_tokenizer, tmp_path):
    def error(path) -> str:
        with pytest.raises(ConfigError) as caught:
            ImageTokens(MNIST5k(), str(path))
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert "no such checkpoint file" in error(tmp_path / "missing.ckpt")

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(mnist_tokenizer.read_bytes()[:5000])
    assert "truncated or corrupt checkpoint" in error(truncated)
    (tmp_path / "text.ckpt").write_text("hello")
    assert "not a checkpoint" in error(tmp_path / "text.ckpt")

    other = torch.load(mnist_tokenizer, weights_only=True)
    other["hyper_parameters"] = {"_class_path": "lit_genai.diffusion.Diffusion", "num_timesteps": 10}
    torch.save(other, tmp_path / "diffusion.ckpt")
    assert "a checkpoint of lit_genai.diffusion.Diffusion, not a VQVAE checkpoint" in error(
        tmp_path / "diffusion.ckpt"
    )
    del other["hyper_parameters"]["_class_path"]
    torch.save(other, tmp_path / "no_networks.ckpt")
    assert "not a VQVAE checkpoint" in error(tmp_path / "no_networks.ckpt")
    torch.save({"model": other["state_dict"]}, tmp_path / "plain.ckpt")
    assert "not a Lightning checkpoint" in error(tmp_path / "plain.ckpt")


def test_random_flip_is_refused(mnist_tokenizer):
    with pytest.raises(ConfigError, match="random_flip=true"):
        ImageTokens(MNIST5k(random_flip=True), str(mnist_tokenizer))


def test_a_checkpoint_of_lit_genai_fit_loads_and_links_into_a_token_model(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    net = {"base_channels": 8, "num_res_blocks": 1, "latent_channels": 4, "num_groups": 4}
    config = {
        "model": {
            "init_args": {
                "encoder": {"init_args": net},
                "decoder": {"init_args": net},
                "quantizer": {"init_args": {"num_codes": 16, "code_dim": 4}},
            }
        },
        "data": {"init_args": {"batch_size": 16}},
        "trainer": {**TINY_CLI_TRAINER, "max_steps": 2, "default_root_dir": str(tmp_path / "run")},
    }
    tiny.write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        main(["fit", "--config", VQVAE_MNIST, "--config", str(tiny)])
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == "lit_genai.vae.vqvae.VQVAE"
    assert hparams["encoder"]["class_path"] == "lit_genai.nn.autoencoder.Encoder"

    data = ImageTokens(MNIST5k(), str(checkpoint))
    assert (data.vocab_size, data.block_size) == (16, 49)
    assert data.cache_path.parent == checkpoint.parent / "tokens"  # default: next to the checkpoint

    # as the data of a token model on the command line: vocab_size is linked from it
    args = ["--model", "toys.TextToyModel", "--data", "lit_genai.data.tokens.ImageTokens"]
    args += ["--data.images", "lit_genai.data.MNIST5k", "--data.tokenizer", str(checkpoint)]
    args += ["--trainer.default_root_dir", str(tmp_path / "tokens_run"), "--trainer.logger", "false"]
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        cli = LitGenAICLI(args=args, run=False)
    assert cli.model.vocab_size == 16 and cli.datamodule.block_size == 49
