"""ImagePixels: image pixels as token sequences (levels, order, binarisations, decode, links), and a
GatedPixelCNN trained and sampled through NextToken on them."""

import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import yaml
from helpers import quiet_trainer

from lit_genai import paradigm
from lit_genai.ar.module import NextToken
from lit_genai.cli import LitGenAICLI
from lit_genai.data.binarize import binarize
from lit_genai.data.images import Digits, ImageDataModule, MNIST5k
from lit_genai.data.pixels import ImagePixels, PixelTokens
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.nn.pixelcnn import GatedPixelCNN


class FakeColour(ImageDataModule):
    """40 random 8-bit colour images of 3x4x5 (8 val, 8 test), labels in [0, num_classes)."""

    def __init__(self, batch_size: int = 8, num_classes: int = 3, random_flip: bool = False, seed: int = 0):
        super().__init__(batch_size=batch_size, val_size=8, seed=seed, random_flip=random_flip)
        self.sample_shape, self.num_classes = (3, 4, 5), num_classes

    def setup(self, stage=None):
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.seed)
            x = torch.randint(0, 256, (40, 3, 4, 5), generator=g).float() / 127.5 - 1  # (40, 3, 4, 5)
            y = torch.randint(0, max(self.num_classes, 1), (40,), generator=g)
            self._set_tensors(x, y, test_size=8)


def _val_images(images: ImageDataModule, n: int):
    images.setup("fit")
    x, y = zip(*[images.val_set[i] for i in range(n)], strict=True)
    return torch.stack(x), torch.stack(y)  # (n, C, H, W), (n,)


def test_links_are_set_before_any_data_is_read():
    images = MNIST5k()
    data = ImagePixels(images, levels=2, binarization="static")
    assert (data.vocab_size, data.block_size, data.num_classes) == (2, 784, 10)
    assert data.image_shape == (1, 28, 28) and data.feature_extractor == "mnist" and data.images is images
    assert data.train_set is None and images.train_set is None
    colour = ImagePixels(FakeColour(num_classes=0))
    assert (colour.vocab_size, colour.block_size, colour.num_classes, colour.feature_extractor) == (
        256,
        60,
        0,
        None,
    )
    # the network built from the links fits; a mismatched one is one line naming the key
    net = GatedPixelCNN(image_shape=data.image_shape, levels=data.vocab_size, num_classes=data.num_classes)
    paradigm.check_net(net, "model.net", vocab_size=data.vocab_size, num_classes=data.num_classes)
    with pytest.raises(ConfigError, match="vocab_size=256 but the data has vocab_size=2"):
        paradigm.check_net(GatedPixelCNN((1, 28, 28), 256), "model.net", vocab_size=2, num_classes=10)
    assert data.identity()["images"] == images.identity() and data.identity()["levels"] == 2


def test_256_levels_round_trip_the_uint8_images_of_mnist():
    data = ImagePixels(MNIST5k(batch_size=500), batch_size=16)
    data.setup("fit")
    assert [len(s) for s in (data.train_set, data.val_set)] == [4000, 500]
    tokens, labels = next(iter(data.val_dataloader()))
    assert tokens.shape == (16, 784) and tokens.dtype == torch.int64
    assert labels.shape == (16,) and labels.dtype == torch.int64
    x, y = _val_images(MNIST5k(), 16)
    assert torch.equal(data.decode(tokens), to_uint8(x)) and torch.equal(labels, y)
    assert torch.equal(tokens, to_uint8(x).flatten(1).long())  # one channel: plain raster order
    assert data.decode(tokens).dtype == torch.uint8
    train_tokens, _ = next(iter(data.train_dataloader()))
    assert train_tokens.shape == (16, 784) and 0 <= train_tokens.min() and train_tokens.max() <= 255
    assert list(next(iter(data.predict_dataloader()))) == list(range(16))
    data.setup("test")
    assert len(data.test_set) == 500


def test_positions_are_raster_order_with_the_channels_innermost():
    data = ImagePixels(FakeColour())
    data.setup("fit")
    x, y = _val_images(FakeColour(), 8)
    k = to_uint8(x)  # (8, 3, 4, 5)
    tokens, labels = next(iter(data.val_dataloader()))  # (8, 60)
    for h in range(4):
        for w in range(5):
            for c in range(3):
                assert torch.equal(tokens[:, (h * 5 + w) * 3 + c], k[:, c, h, w].long())
    assert torch.equal(labels, y) and torch.equal(data.decode(tokens), k)


def test_other_levels_are_equal_bins_of_the_unit_interval():
    data = ImagePixels(FakeColour(), levels=16)
    data.setup("fit")
    x, _ = _val_images(FakeColour(), 8)
    tokens, _ = next(iter(data.val_dataloader()))
    u = (x + 1) / 2  # (8, 3, 4, 5) in [0, 1]
    expected = (u * 16).floor().clamp(max=15).long().permute(0, 2, 3, 1).flatten(1)
    assert torch.equal(tokens, expected) and tokens.max() <= 15
    white = ImagePixels(FakeColour(), levels=16)
    decoded = white.decode(torch.tensor([[15, 0, 1, 7] * 15]))  # (1, 3, 4, 5); t 255 / 15 = 17 t
    assert decoded[0, :, 0, 0].tolist() == [255, 0, 17] and decoded[0, 0, 0, 1] == 119
    assert ImagePixels(MNIST5k(), levels=2, binarization="threshold").decode(
        torch.tensor([[0, 1] * 392])
    ).flatten()[:2].tolist() == [0, 255]


def test_static_and_threshold_binarisations_are_deterministic():
    x, _ = _val_images(MNIST5k(), 4)
    for mode in ("static", "threshold"):
        data = ImagePixels(MNIST5k(), levels=2, binarization=mode)
        data.setup("fit")
        first = torch.stack([data.val_set[i][0] for i in range(4)])  # (4, 784)
        again = torch.stack([data.val_set[i][0] for i in range(4)])
        assert torch.equal(first, again) and set(first.unique().tolist()) == {0, 1}
        assert torch.equal(first, (binarize(x, mode) > 0).long().flatten(1))
        assert torch.equal(data.train_set[3][0], data.train_set[3][0])
    u = (x + 1) / 2
    threshold = ImagePixels(MNIST5k(), levels=2, binarization="threshold")
    threshold.setup("fit")
    assert torch.equal(threshold.val_set[0][0], (u[0] > 0.5).long().flatten())


def test_dynamic_binarisation_redraws_training_images_and_keeps_evaluation_static():
    data = ImagePixels(MNIST5k(), levels=2, binarization="dynamic")
    data.setup("fit")
    assert data.train_set.binarization == "dynamic" and data.val_set.binarization == "static"
    draws = torch.stack([data.train_set[0][0] for _ in range(400)]).float()  # (400, 784)
    assert not torch.equal(draws[0], draws[1])  # a fresh draw every time the image is drawn
    x, _ = data.images.train_set[0]
    p = ((x + 1) / 2).flatten()  # (784,) the grey levels: each pixel's probability of white
    tolerance = 5 * torch.sqrt(p * (1 - p) / 400) + 1e-6
    assert ((draws.mean(0) - p).abs() <= tolerance).all()  # Bernoulli(p) per pixel
    static = ImagePixels(MNIST5k(), levels=2, binarization="static")
    static.setup("fit")
    assert torch.equal(data.val_set[5][0], static.val_set[5][0]) and torch.equal(
        data.val_set[5][0], data.val_set[5][0]
    )
    data.setup("test")
    assert data.test_set.binarization == "static"


def test_dynamic_draws_are_this_ranks_slice_of_a_world_sized_draw():
    images = MNIST5k()
    images.setup("fit")
    ranks = [PixelTokens(images.train_set, 2, "dynamic", rank=r, world=2) for r in (0, 1)]
    draws = []
    for subset in ranks:
        torch.manual_seed(7)
        draws.append(subset[0][0])
    assert not torch.equal(draws[0], draws[1])  # ranks seeded alike still draw different noise
    torch.manual_seed(7)
    u = torch.rand(2, 1, 28, 28)[1:]  # rank 1's slice
    x, _ = images.train_set[0]
    assert torch.equal(draws[1], (binarize(x[None], "dynamic", uniform=u) > 0).long().flatten())


def test_random_flip_mirrors_token_rows_of_training_batches():
    data = ImagePixels(FakeColour(random_flip=True))
    data.setup("fit")
    tokens, y = next(iter(data.val_dataloader()))
    assert data.on_after_batch_transfer((tokens, y), 0)[0] is tokens  # no trainer: untouched
    data.trainer = SimpleNamespace(training=True, world_size=1)
    torch.manual_seed(0)
    flipped, same_y = data.on_after_batch_transfer((tokens, y), 0)
    grid, out = tokens.view(8, 4, 5, 3), flipped.view(8, 4, 5, 3)
    mirrored = torch.tensor([torch.equal(o, g.flip(1)) for o, g in zip(out, grid, strict=True)])
    kept = torch.tensor([torch.equal(o, g) for o, g in zip(out, grid, strict=True)])
    assert (mirrored | kept).all() and mirrored.any() and kept.any() and same_y is y


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"levels": 2}, "levels=2 needs a binarisation"),
        ({"levels": 256, "binarization": "static"}, "binarization=static applies to levels=2 only"),
        ({"levels": 16, "binarization": "dynamic"}, "levels=16: remove data.init_args.binarization"),
        ({"levels": 1}, "levels=1 must be between 2 and 256"),
        ({"levels": 300}, "levels=300 must be between 2 and 256"),
        ({"levels": 2, "binarization": "bernoulli"}, "set data.init_args.binarization to one of"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImagePixels(MNIST5k(), **kwargs)


def test_a_pixelcnn_trains_and_samples_through_next_token(tmp_path):
    data = ImagePixels(Digits(batch_size=64), levels=2, binarization="dynamic", batch_size=32)
    torch.manual_seed(0)
    net = GatedPixelCNN(
        data.image_shape, data.vocab_size, hidden=12, n_layers=2, output_hidden=12, num_classes=10
    )
    model = NextToken(
        net,
        vocab_size=data.vocab_size,
        block_size=data.block_size,
        num_classes=data.num_classes,
        modality="image",
    )
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=2)
    trainer.fit(model, datamodule=data)
    metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
    # nll_nats per image = mean NLL per token x 64 positions; bpd = bits per token
    assert metrics["val/nll_nats"] == pytest.approx(64 * metrics["val/loss"], rel=1e-5)
    assert metrics["val/bpd"] == pytest.approx(
        metrics["val/loss"] / torch.log(torch.tensor(2.0)).item(), rel=1e-5
    )
    assert metrics["val/loss"] < 0.75  # below log 2 after a few steps: the positions are not independent
    samples = model.sample(3, cond=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 64) and set(samples.unique().tolist()) <= {0, 1}
    images = data.decode(samples)
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.uint8
    again = model.sample(3, cond=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_the_command_line_builds_a_pixelcnn_on_pixel_data(tmp_path):
    config = tmp_path / "pixelcnn.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "lit_genai.ar.module.NextToken",
                    "init_args": {
                        "modality": "image",
                        "net": {
                            "class_path": "lit_genai.nn.pixelcnn.GatedPixelCNN",
                            "init_args": {
                                "image_shape": [1, 8, 8],
                                "levels": 2,
                                "num_classes": 10,
                                "hidden": 12,
                            },
                        },
                    },
                },
                "data": {
                    "class_path": "lit_genai.data.pixels.ImagePixels",
                    "init_args": {
                        "images": {"class_path": "lit_genai.data.Digits", "init_args": {"seed": 3}},
                        "levels": 2,
                        "binarization": "dynamic",
                    },
                },
                "trainer": {"default_root_dir": str(tmp_path / "run"), "logger": False},
            }
        )
    )
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        cli = LitGenAICLI(args=["--config", str(config)], run=False)
    assert (cli.model.vocab_size, cli.model.block_size, cli.model.num_classes) == (2, 64, 10)  # linked
    assert cli.model.net.image_shape == (1, 8, 8) and cli.datamodule.images.seed == 3
    assert cli.datamodule.binarization == "dynamic" and cli.model.target_offset == 0
