"""LatentGrids: reconstruction, interpolation and traversal grids as PNGs and TensorBoard images, for
modules keeping the Autoencoder protocol only; the when-to-draw rule of lit_genai.callbacks.epochs."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_genai import paradigm
from lit_genai.callbacks.epochs import should_draw
from lit_genai.callbacks.latents import LatentGrids
from lit_genai.data import MNIST5k
from lit_genai.media import to_uint8
from lit_genai.nn.vae import MLPDecoder, MLPEncoder
from lit_genai.vae import VAE

SIDE = 28 + 2  # an image and make_grid's padding


def _grid_shape(path):
    """(rows, columns) of 28x28 images in a make_grid PNG (padding 2)."""
    width, height = Image.open(path).size
    return (height - 2) // SIDE, (width - 2) // SIDE


def test_a_vae_run_writes_and_logs_the_three_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = VAE(
        MLPEncoder(hidden=[32], latent_dim=6),
        MLPDecoder(hidden=[32], latent_dim=6),
        binarization="dynamic",
        test_importance_samples=0,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    grids = LatentGrids(num_images=6, interpolation_steps=5, traversal_dims=4, traversal_steps=7)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(
        tmp_path, callbacks=[grids], logger=logger, max_steps=2, limit_train_batches=2, limit_val_batches=2
    )
    trainer.fit(model, MNIST5k(batch_size=4))  # the 6 images come from the first two validation batches

    paths = grids.last_paths
    assert set(paths) == {"reconstructions", "interpolations", "traversals"}
    for kind, path in paths.items():
        assert path.parent == tmp_path / "latents" and path.name.startswith(f"{kind}_epoch=0000")
    assert _grid_shape(paths["reconstructions"]) == (2, 6)  # originals above reconstructions
    assert _grid_shape(paths["interpolations"]) == (3, 5 + 2)  # 3 pairs: a, 5 points, b
    assert _grid_shape(paths["traversals"]) == (4, 7)  # 4 dimensions x 7 values

    # the top row holds the validation images as they are
    pixels = torch.from_numpy(np.array(Image.open(paths["reconstructions"]).convert("L")))
    first = pixels[2 : 2 + 28, 2 : 2 + 28]
    assert torch.equal(first, to_uint8(grids._images[:1])[0, 0])

    (events,) = (tmp_path / "tb" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert {"latents/reconstructions", "latents/interpolations", "latents/traversals"} <= set(
        accumulator.Tags()["images"]
    )


class ImageModel(LightningModule):
    """Trains and validates on (x, y) batches of 1x28x28 images; keeps no autoencoder member."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return (self.weight * x).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return self.val_dataloader()

    def val_dataloader(self):
        images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=4)


class EncodeDecodeOnly(ImageModel):
    """``encode``, ``decode`` and ``latent_space`` (the old duck-typed check) but not the rest of the
    Autoencoder protocol (``latent_shape``, ``reconstruct``, ``per_example_loss``)."""

    latent_space = "continuous"

    def encode(self, x, y=None):
        return F.avg_pool2d(x, 4)  # (B, 1, 7, 7)

    def decode(self, z, y=None):
        return F.interpolate(z, scale_factor=4)  # (B, 1, 28, 28)


class ToyAutoencoder(ImageModel):
    """Keeps the Autoencoder protocol in a few lines. encode: 4x4 average pooling (continuous, spatial)
    or rounded levels (discrete); decode: its inverse."""

    def __init__(self, latent_space="continuous"):
        super().__init__()
        self.latent_space = latent_space
        self.latent_shape = (28, 28) if latent_space == "discrete" else (1, 7, 7)
        self.decoded: list[Tensor] = []

    def encode(self, x, y=None):
        if self.latent_space == "discrete":
            return ((x + 1) * 1.5).round().long()[:, 0]  # (B, H, W) token ids in {0, 1, 2, 3}
        return F.avg_pool2d(x, 4)  # (B, 1, 7, 7)

    def decode(self, z, y=None):
        self.decoded.append(z)
        if self.latent_space == "discrete":
            return z[:, None].float() / 1.5 - 1
        return F.interpolate(z, scale_factor=4)

    def reconstruct(self, x, y=None):
        return self.decode(self.encode(x, y), y)

    def per_example_loss(self, x, y=None):
        return (self.reconstruct(x, y) - x).pow(2).flatten(1).mean(1)  # (B,)


def _fit_with_grids(module, tmp_path) -> LatentGrids:
    grids = LatentGrids(num_images=4, interpolation_steps=3)
    trainer = quiet_trainer(tmp_path, callbacks=[grids], max_epochs=1, limit_train_batches=1)
    trainer.fit(module)
    return grids


@pytest.mark.parametrize("module", [ImageModel, EncodeDecodeOnly])
def test_modules_without_the_autoencoder_protocol_are_skipped_silently(module, tmp_path):
    module = module()
    assert not paradigm.is_autoencoder(module)
    grids = _fit_with_grids(module, tmp_path)  # its validation batches hold images
    assert grids._images is None and grids.last_paths == {}
    assert not (tmp_path / "latents").exists()


def test_a_module_keeping_the_autoencoder_protocol_gets_its_grids(tmp_path):
    module = ToyAutoencoder()
    assert paradigm.is_autoencoder(module)
    grids = _fit_with_grids(module, tmp_path)
    assert set(grids.last_paths) == {"reconstructions", "interpolations"}  # (1, 7, 7) latents: no traversals
    assert _grid_shape(grids.last_paths["reconstructions"]) == (2, 4)
    assert _grid_shape(grids.last_paths["interpolations"]) == (2, 3 + 2)


def _trainer_state(epoch, *, sanity=False, stop=False, max_epochs=10, max_steps=-1, step=5):
    return SimpleNamespace(
        sanity_checking=sanity,
        should_stop=stop,
        current_epoch=epoch,
        max_epochs=max_epochs,
        max_steps=max_steps,
        global_step=step,
    )


def test_grids_and_samples_are_drawn_every_nth_epoch_and_after_the_last():
    assert [e for e in range(10) if should_draw(_trainer_state(e), 3)] == [2, 5, 8, 9]  # 9: the last
    assert not should_draw(_trainer_state(2), 0)  # 0 turns drawing off
    assert not should_draw(_trainer_state(2, sanity=True), 1)
    assert should_draw(_trainer_state(0, stop=True), 3)  # early stopping
    assert should_draw(_trainer_state(0, max_steps=5, step=5), 3)  # max_steps reached
    assert not should_draw(_trainer_state(0, max_epochs=-1), 3)  # no epoch limit


@pytest.mark.parametrize(
    "latent_space, kinds",
    [("discrete", {"reconstructions"}), ("continuous", {"reconstructions", "interpolations"})],
)
def test_discrete_and_spatial_latents_get_the_grids_that_apply(latent_space, kinds, tmp_path):
    grids = LatentGrids(num_images=4, interpolation_steps=3)
    grids._images, grids._labels = torch.rand(4, 1, 28, 28) * 2 - 1, torch.zeros(4, dtype=torch.long)
    module = ToyAutoencoder(latent_space)
    paths = grids.draw(quiet_trainer(tmp_path), module)
    assert set(paths) == kinds
    if latent_space == "continuous":  # interpolations of (B, 1, 7, 7) latents
        path = module.decoded[1]  # pair (0, 1): t = 0, 1/2, 1
        z0, z1 = F.avg_pool2d(grids._images[:2], 4)
        assert torch.allclose(path, torch.stack([z0, (z0 + z1) / 2, z1]), atol=1e-6)


class VectorToy(ToyAutoencoder):
    """Fixed (4, 3) codes: dimension 2 varies most over the images, then dimension 0."""

    codes = torch.tensor([[0.0, 1.0, 5.0], [1.0, 1.0, -5.0], [0.0, 1.1, 3.0], [1.0, 1.0, 0.0]])

    def __init__(self):
        super().__init__("continuous")
        self.latent_shape = (3,)  # vector latents: the grids include traversals

    def encode(self, x, y=None):
        return self.codes.clone()

    def decode(self, z, y=None):
        self.decoded.append(z)
        return torch.zeros(len(z), 1, 28, 28)


def test_traversals_move_the_most_active_dimensions_of_the_first_code(tmp_path):
    grids = LatentGrids(num_images=4, traversal_dims=2, traversal_range=2.0, traversal_steps=5)
    grids._images, grids._labels = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    module = VectorToy()
    grids.draw(quiet_trainer(tmp_path), module)
    codes = module.decoded[-1].view(2, 5, 3)  # (dims, steps, D)
    base, offsets = VectorToy.codes[0], torch.linspace(-2, 2, 5)
    for row, dim in enumerate([2, 0]):
        expected = base.expand(5, 3).clone()
        expected[:, dim] += offsets
        assert torch.allclose(codes[row], expected)
