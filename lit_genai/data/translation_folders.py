"""Image-to-image data from folders: pix2pix's A|B pairs, CycleGAN's two domains, and the standard sets.

Layouts (those of the authors' data sets, so their archives unpack into place):

- ``PairedFolder``: ``root/train/``, ``root/val/`` (optional: else ``val_size`` pairs held out of
  train), ``root/test/`` (optional: else the validation pairs), PNG / JPG files, each one picture
  of the A image and the B image side by side (A left). ``direction: BtoA`` swaps them.
- ``UnpairedFolders``: ``root/trainA/``, ``root/trainB/``, ``root/testA/``, ``root/testB/``;
  validation images are held out of trainA / trainB (``val_size`` each).

Pictures are resized to ``image_size`` (squares: the standard sets are square; others are resized
without cropping) and kept as uint8 in memory; items are float32 in [-1, 1], with label 0.
Batches as in ``data.translation`` (paired ``(source, target, label)``, unpaired
``(a, b, label_a, label_b)``).

Standard sets (``Facades``, ``Maps``, ``Horse2Zebra``; Isola et al. 2017, Zhu et al. 2017) download
their archive from the authors' server in ``prepare_data`` when ``download`` is true; offline (or
with ``download: false``) ``setup`` stops with one line saying which folder to fill and from where.
Their experiments (``experiments/gan/pix2pix_facades.yaml``, ``cyclegan_horse2zebra.yaml``) are GPU
recipes, not run here.

Shape legend: N pictures, C channels, S = image_size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive

from lit_genai.atomic import atomic_folder
from lit_genai.data.checks import Folder
from lit_genai.data.images import ImageDataModule
from lit_genai.data.translation import UnpairedItems
from lit_genai.errors import ConfigError, DataNotFoundError

SUFFIXES = (".png", ".jpg", ".jpeg")
PIX2PIX_DATA = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
CYCLEGAN_DATA = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets"


def image_files(folder: Path) -> list[Path]:
    """The PNG / JPG files of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []


def read_picture(path: Path, size: tuple[int, int], channels: int) -> Tensor:
    """One file as uint8 (C, H, W), resized to ``size`` (W, H) bicubically, grey or RGB."""
    with Image.open(path) as picture:
        picture = picture.convert("L" if channels == 1 else "RGB").resize(size, Image.BICUBIC)
        array = np.asarray(picture, dtype=np.uint8).reshape(size[1], size[0], channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W)


class _Pictures(Dataset):
    """uint8 tensors (N, C, S, S) served as float32 in [-1, 1]: items (source, target, label 0) or,
    with ``target`` None, (image, label 0)."""

    def __init__(self, source: Tensor, target: Tensor | None = None) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        label = torch.tensor(0)
        source = self.source[i].float() / 127.5 - 1
        if self.target is None:
            return source, label
        return source, self.target[i].float() / 127.5 - 1, label


class _FolderData(ImageDataModule):
    """What the folder modules share: root, download, the one-line 'where to put the files' error."""

    conditions = ("image", "label")
    url: str | None = None  # the archive of a standard set
    archive_folder: str = ""  # the folder the archive unpacks to, under root's parent

    def _check_root(self, required: list[str]) -> None:
        missing = [name for name in required if not image_files(Path(self.root) / name)]
        if missing:
            where = f"put the images under {str(Path(self.root))!r}: " + ", ".join(f"{m}/" for m in missing)
            if self.url is not None:
                state = "its download failed or is off" if self.download else "download is false"
                where += f" ({state}; the archive is {self.url}, or pass --data.download true online)"
            raise DataNotFoundError(f"{type(self).__name__}: no images in {', '.join(missing)}; {where}")

    def write_folders(self) -> list[Folder]:
        if self.url is None or not self.download or Path(self.root).is_dir():
            return []
        return [
            Folder(
                f"the {type(self).__name__} download folder (data.init_args.root)",
                Path(self.root).parent,
                "pass --data.root <a writable folder>, or put the images there and pass "
                "--data.download false",
            )
        ]

    def prepare_data(self) -> None:
        root = Path(self.root)
        if self.url is None or not self.download or root.is_dir():
            return
        try:  # unpacked into a temporary folder, renamed into place whole (lit_genai.atomic)
            with atomic_folder(str(root.parent), root.name) as scratch:
                download_and_extract_archive(self.url, str(scratch), remove_finished=True)
                inner = Path(scratch) / self.archive_folder
                if inner.is_dir():  # the archive holds one folder named after the set: lift its content
                    for child in inner.iterdir():
                        child.rename(Path(scratch) / child.name)
                    inner.rmdir()
        except (OSError, RuntimeError) as err:  # URLError (no network) is an OSError
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise DataNotFoundError(
                f"Downloading {self.url} into {str(root)!r} failed ({reason}); download it elsewhere, unpack "
                f"it so that {str(root)!r} holds its folders, and pass --data.download false"
            ) from err


class PairedFolder(_FolderData):
    """A|B pictures side by side in ``root/{train,val,test}/`` (module docstring).

    Args:
        root: The folder of the pairs.
        direction: ``AtoB`` (source = the left half) or ``BtoA``.
        image_size: S, the side of each half after resizing.
        channels: 1 (grey) or 3 (RGB), of both halves.
        download: Fetch a standard set's archive when ``root`` is missing (subclasses).
        val_size: Pairs held out of train for validation when there is no ``val/``.
        seed: Seed of that hold-out.
        batch_size: Pairs per batch.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        root: str = "data/pairs",
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        image_size: int = 256,
        channels: int = 3,
        download: bool = False,
        val_size: int = 50,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size, seed, False, predict_samples)
        if direction not in ("AtoB", "BtoA") or channels not in (1, 3):
            raise ConfigError(
                f"data.direction={direction!r}, data.channels={channels}: AtoB / BtoA and 1 / 3"
            )
        self.root, self.direction, self.image_size = root, direction, image_size
        self.channels, self.download = channels, download
        self.sample_shape = self.source_shape = (channels, image_size, image_size)
        self.num_classes = 0

    def _read(self, folder: str) -> tuple[Tensor, Tensor] | None:
        files = image_files(Path(self.root) / folder)
        if not files:
            return None
        S = self.image_size
        pictures = torch.stack([read_picture(f, (2 * S, S), self.channels) for f in files])  # (N, C, S, 2S)
        a, b = pictures[..., :S], pictures[..., S:]  # A on the left
        return (a, b) if self.direction == "AtoB" else (b, a)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_root(["train"])
        source, target = self._read("train")
        val = self._read("val")
        if val is None:  # hold out val_size pairs of train
            train, held, _ = self._split(len(source))
            val, (source, target) = (source[held], target[held]), (source[train], target[train])
        test = self._read("test") or val
        self.train_set = _Pictures(source, target)
        self.val_set, self.test_set = _Pictures(*val), _Pictures(*test)


class UnpairedFolders(_FolderData):
    """Two domains in ``root/{trainA,trainB,testA,testB}/`` (module docstring).

    Args:
        root: The folder of the four subfolders.
        image_size: S, the side after resizing.
        channels: 1 (grey) or 3 (RGB), of both domains.
        download: Fetch a standard set's archive when ``root`` is missing (subclasses).
        val_size: Images of each domain held out of train for validation.
        seed: Seed of that hold-out and of the training pairing.
        batch_size: Items (a, b) per batch.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        root: str = "data/unpaired",
        image_size: int = 256,
        channels: int = 3,
        download: bool = False,
        val_size: int = 50,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size, seed, False, predict_samples)
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: 1 or 3")
        self.root, self.image_size, self.channels, self.download = root, image_size, channels, download
        self.sample_shape = self.source_shape = (channels, image_size, image_size)
        self.num_classes = 0

    def _read(self, folder: str) -> Tensor:
        S = self.image_size
        return torch.stack(
            [read_picture(f, (S, S), self.channels) for f in image_files(Path(self.root) / folder)]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_root(["trainA", "trainB", "testA", "testB"])
        sets = []
        for domain in "AB":
            train = self._read(f"train{domain}")
            keep, held, _ = self._split(len(train))
            sets.append(
                (_Pictures(train[keep]), _Pictures(train[held]), _Pictures(self._read(f"test{domain}")))
            )
        (train_a, val_a, test_a), (train_b, val_b, test_b) = sets
        self.train_set = UnpairedItems(train_a, train_b, True, self.seed)
        self.val_set = UnpairedItems(val_a, val_b, False, self.seed)
        self.test_set = UnpairedItems(test_a, test_b, False, self.seed)


class Facades(PairedFolder):
    """CMP Facades (Tyleček & Šára 2013) as pix2pix packs it: 400 train / 100 val / 106 test pairs of
    photo (A) | label map (B), 256x256; pix2pix translates labels -> photo (``direction: BtoA``)."""

    url = f"{PIX2PIX_DATA}/facades.tar.gz"
    archive_folder = "facades"

    def __init__(
        self,
        root: str = "data/facades",
        direction: Literal["AtoB", "BtoA"] = "BtoA",
        image_size: int = 256,
        download: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(
            root, direction, image_size, 3, download, 50, 0, batch_size, num_workers, predict_samples
        )


class Maps(PairedFolder):
    """Google Maps as pix2pix packs it: 1096 train / 1098 val pairs of aerial photo (A) | map (B),
    600x600 pictures resized to ``image_size``."""

    url = f"{PIX2PIX_DATA}/maps.tar.gz"
    archive_folder = "maps"

    def __init__(
        self,
        root: str = "data/maps",
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        image_size: int = 256,
        download: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(
            root, direction, image_size, 3, download, 50, 0, batch_size, num_workers, predict_samples
        )


class Horse2Zebra(UnpairedFolders):
    """horse2zebra (ImageNet pictures as CycleGAN packs them): 1067 horses (A) / 1334 zebras (B) to
    train, 120 / 140 to test, 256x256."""

    url = f"{CYCLEGAN_DATA}/horse2zebra.zip"
    archive_folder = "horse2zebra"

    def __init__(
        self,
        root: str = "data/horse2zebra",
        image_size: int = 256,
        download: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(root, image_size, 3, download, 50, 0, batch_size, num_workers, predict_samples)
