"""Image DataModules: batch contract, seeded splits, flip only in training, offline errors."""

from types import SimpleNamespace
from urllib.error import URLError

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from torch.utils.data import TensorDataset

from lit_genai.data import CIFAR10, MNIST, Digits, FashionMNIST, ImageDataModule, ImageFolder, MNIST5k
from lit_genai.errors import ConfigError, DataNotFoundError, LitGenAIError


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.tensors  # (N, C, H, W), (N,)
    return x, y


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


@pytest.fixture(scope="module")
def mnist5k() -> MNIST5k:
    dm = MNIST5k(batch_size=64)
    dm.setup("fit")
    return dm


def test_mnist5k_batches_follow_the_contract(mnist5k):
    assert mnist5k.sample_shape == (1, 28, 28) and mnist5k.num_classes == 10
    x, y = next(iter(mnist5k.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    x_all, y_all = _all(mnist5k.train_set)
    assert x_all.min() == -1 and x_all.max() == 1  # full pixel range 0..255 mapped onto [-1, 1]
    assert set(y_all.tolist()) == set(range(10))


def test_mnist5k_split_sizes_disjoint_and_balanced(mnist5k):
    sets = mnist5k.train_set, mnist5k.val_set, mnist5k.test_set
    assert [len(s) for s in sets] == [4000, 500, 500]
    train, val, test = (_rows(_all(s)[0]) for s in sets)
    assert not (train & val) and not (train & test) and not (val & test)
    counts = torch.bincount(_all(mnist5k.val_set)[1], minlength=10)  # rows are sorted by class on disk
    assert counts.min() >= 25 and counts.max() <= 75, counts


def test_mnist5k_split_is_seeded(mnist5k):
    same, other = MNIST5k(seed=0), MNIST5k(seed=1)
    same.setup("fit")
    other.setup("fit")
    assert torch.equal(_all(same.val_set)[0], _all(mnist5k.val_set)[0])
    assert not torch.equal(_all(other.val_set)[0], _all(mnist5k.val_set)[0])


def test_digits_shapes_range_and_split():
    dm = Digits(batch_size=32)
    assert dm.sample_shape == (1, 8, 8) and dm.num_classes == 10
    dm.setup("fit")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [1497, 150, 150]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    x_all, _ = _all(dm.train_set)
    assert x_all.min() == -1 and x_all.max() == 1  # values 0..16


def test_split_larger_than_data_is_a_config_error():
    with pytest.raises(ConfigError, match="val_size=1000"):
        Digits(val_size=1000, test_size=1000).setup("fit")


def test_decode_round_trips_pixels():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = pixels.float() / 127.5 - 1  # what every DataModule feeds the model
    decoded = Digits().decode(x)
    assert decoded.dtype == torch.uint8 and decoded.shape == x.shape
    assert torch.equal(decoded, pixels)
    assert Digits().decode(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped


def test_predict_dataloader_yields_index_batches():
    batches = list(Digits(batch_size=4, predict_samples=10).predict_dataloader())
    assert [b.shape for b in batches] == [(4,), (4,), (2,)]
    assert all(b.dtype == torch.int64 for b in batches)
    assert torch.equal(torch.cat(batches), torch.arange(10))


def _asymmetric_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, 4).expand(n, 1, 4, 4).clone()  # (n, 1, 4, 4), increasing along W
    return x, torch.zeros(n, dtype=torch.int64)


def _flipped(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] > 0).float()  # (B,) 1 where the image was mirrored


def test_random_flip_only_while_training():
    dm = Digits(random_flip=True)
    x, y = _asymmetric_batch(1000)
    assert dm.on_after_batch_transfer((x, y), 0)[0] is x  # no trainer attached
    dm.trainer = SimpleNamespace(training=False)
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], x)
    dm.trainer = SimpleNamespace(training=True)
    out, out_y = dm.on_after_batch_transfer((x, y), 0)
    assert out_y is y
    is_flipped = _flipped(out).bool()
    assert torch.equal(out[is_flipped], x[is_flipped].flip(-1)) and torch.equal(
        out[~is_flipped], x[~is_flipped]
    )
    assert 0.4 < is_flipped.float().mean() < 0.6
    assert torch.equal(Digits(random_flip=False).on_after_batch_transfer((x, y), 0)[0], x)


class _ConstantImages(ImageDataModule):
    """64 copies of one left-to-right ramp, so a flip is visible in every example."""

    def __init__(self):
        super().__init__(batch_size=64, val_size=0, random_flip=True)
        self.sample_shape, self.num_classes = (1, 4, 4), 1

    def setup(self, stage=None):
        self.train_set = self.val_set = TensorDataset(*_asymmetric_batch(64))


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.flipped = {}

    def training_step(self, batch, batch_idx):
        self.flipped["train"] = _flipped(batch[0]).mean().item()
        return self.weight * batch[0].mean()

    def validation_step(self, batch, batch_idx):
        self.flipped["val"] = _flipped(batch[0]).mean().item()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_random_flip_inside_a_real_trainer():
    model = _Recorder()
    trainer = L.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=_ConstantImages())
    assert 0.2 < model.flipped["train"] < 0.8
    assert model.flipped["val"] == 0


@pytest.mark.parametrize(
    "cls, name", [(MNIST, "MNIST"), (FashionMNIST, "Fashion-MNIST"), (CIFAR10, "CIFAR-10")]
)
def test_torchvision_sets_offline_without_files(tmp_path, cls, name):
    root = str(tmp_path / "nothing")
    dm = cls(root=root, download=False)
    assert dm.num_classes == 10 and dm.sample_shape == ((3, 32, 32) if cls is CIFAR10 else (1, 28, 28))
    dm.prepare_data()  # download=False: touches neither disk nor network
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert name in message and repr(root) in message and "download" in message and "\n" not in message


def test_failed_download_says_how_to_place_files(tmp_path, monkeypatch):
    def offline(*args, download=False, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "dataset_cls", offline)
    with pytest.raises(DataNotFoundError, match="failed.*cifar-10-batches-py") as info:
        CIFAR10(root=str(tmp_path), download=True).prepare_data()
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_cli_schema_has_documented_defaults():
    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR10, "data")
    defaults = parser.get_defaults().data
    assert defaults.val_size == 1000 and defaults.root == "data" and defaults.download is False
    assert parser.get_defaults().data.batch_size == 128
    helps = {a.dest: a.help for a in parser._actions if a.dest.startswith("data.")}
    assert all(helps[f"data.{k}"] for k in ("root", "download", "val_size", "random_flip", "seed"))
    mnist = ArgumentParser()
    mnist.add_class_arguments(MNIST, "data")
    assert mnist.get_defaults().data.val_size == 5000


def _image_folder(root, sizes=((20, 30), (30, 20), (24, 24))):
    for index, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for n, size in enumerate(sizes):
            colour = (255 * index, 40 * n, 100)
            Image.new("RGB", size, colour).save(root / cls / f"{n}.png")
    return root


def test_image_folder_shapes_and_labels(tmp_path):
    root = _image_folder(tmp_path / "images")
    dm = ImageFolder(root=str(root), image_size=16, val_size=2, batch_size=8)
    assert dm.sample_shape == (3, 16, 16) and dm.num_classes == 2  # known before setup
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() == 1  # a 255 channel in the "dog" images
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
    assert len(dm.val_set) == 2

    grey = ImageFolder(root=str(root), image_size=8, channels=1, labels=False, val_size=2)
    assert grey.sample_shape == (1, 8, 8) and grey.num_classes == 0
    grey.setup("fit")
    x, y = next(iter(grey.train_dataloader()))
    assert x.shape == (4, 1, 8, 8) and torch.equal(y, torch.zeros(4, dtype=torch.int64))


def test_image_folder_corrupt_file_names_it(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dm = ImageFolder(root=str(root), image_size=16, val_size=1, batch_size=16)
    dm.setup("fit")
    with pytest.raises(LitGenAIError, match="broken.png") as info:
        list(dm.train_dataloader())
    assert "\n" not in str(info.value)


def test_image_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere"):
        ImageFolder(root=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="empty"):
        ImageFolder(root=str(tmp_path / "empty"))


class _FakeCIFAR(torch.utils.data.Dataset):
    """Stands in for torchvision's CIFAR10: 50 'train' or 20 'test' items tagged by split."""

    def __init__(self, root, train=True, transform=None, download=False):
        self.train, self.n = train, 50 if train else 20

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3, 32, 32), 1.0 if self.train else -1.0), i % 10


@pytest.mark.parametrize("val_split", ["train", "test"])
def test_val_split_from_train_or_test(monkeypatch, val_split):
    monkeypatch.setattr(CIFAR10, "dataset_cls", _FakeCIFAR)
    data = CIFAR10(val_size=5, val_split=val_split)
    data.setup("fit")
    assert len(data.val_set) == 5
    val_x = torch.stack([data.val_set[i][0] for i in range(5)])
    if val_split == "test":  # every training image is kept for training (paper recipes)
        assert len(data.train_set) == 50 and (val_x == -1).all()
    else:
        assert len(data.train_set) == 45 and (val_x == 1).all()
