"""Captioned image files: any folder of images with a captions file, and COCO Captions.

``CaptionedImages`` reads a folder and a captions file, either JSON lines
(``{"image": "dogs/1.jpg", "caption": "a dog on a sofa"}``, one object per line) or CSV with the
columns ``image,caption``; image paths are relative to the folder, and an image may have several
captions (one row each). ``COCOCaptions`` reads the official COCO layout
(``<root>/annotations/captions_train2017.json``, ``<root>/train2017/*.jpg``, val likewise), and
downloads the three archives from images.cocodataset.org when ``download`` is set and it is online
(about 19 GB); without them it stops with one line saying which files to put where.

Images are resized (short side) and centre-cropped to ``image_size``, RGB, float in [-1, 1]. Batches
(``lit_genai.data.shapes.collate_captioned``) are

    x      float32 (B, 3, S, S) in [-1, 1]
    y      int64 (B,) zeros                  no class labels (num_classes 0)
    text   list of B str                     the captions: the ``text`` condition

The vocabulary is open (``text_vocabulary`` None): a model tokenizes captions as UTF-8 bytes or
with its Hugging Face tokenizer (``lit_genai.text_condition``).

Which caption an image gets: validation and test items are one per image with its first caption
(so the evaluation captions are fixed). Training items follow ``caption_choice``: ``"random"``
is one item per image per epoch with one of its captions drawn at random, from a generator seeded
by (seed, epoch, image) so that a resumed run draws the same captions (``EpochDraws``); ``"row"`` is
one item per caption (an image with 5 captions is seen 5 times per epoch).

Shape legend: B batch, S side in pixels, N images, E epoch.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision.transforms as T
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.utils import download_and_extract_archive

from lit_genai.atomic import atomic_folder
from lit_genai.data.checks import Folder, check_counts
from lit_genai.data.images import ImageDataModule, _listing, _load_image, _to_unit_range
from lit_genai.data.order import EpochOrder, training_loader
from lit_genai.data.shapes import collate_captioned
from lit_genai.errors import ConfigError, DataNotFoundError

Records = list[tuple[str, list[str]]]  # (image path, its captions), one per image


class EpochDraws(EpochOrder):
    """``EpochOrder``'s shuffled order of epoch e with every index i given as ``e * n + i``, so that an
    item knows its epoch: a caption drawn from (seed, e * n + i) is resumed exactly, as the order is."""

    def order(self, epoch: int) -> Tensor:
        return super().order(epoch) + epoch * self.n  # (n,) int64


class CaptionedFiles(Dataset):
    """Image files and their captions: item (image float32 (3, S, S) in [-1, 1], 0, caption).

    Args:
        records: (path, captions) per image.
        image_size: S.
        choice: ``"first"``: one item per image, its first caption; ``"random"``: one item per image,
            index ``e * n + i`` draws a caption of image i from a generator seeded by (seed, index);
            ``"row"``: one item per caption.
        seed: Seed of the ``"random"`` draws.
    """

    def __init__(self, records: Records, image_size: int, choice: str = "first", seed: int = 0):
        self.records, self.choice, self.seed = records, choice, seed
        self.transform = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), _to_unit_range(3)])
        # "row": item j is caption rows[j][1] of image rows[j][0]
        self.rows = [(i, k) for i, (_, texts) in enumerate(records) for k in range(len(texts))]

    def __len__(self) -> int:
        return len(self.rows) if self.choice == "row" else len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if self.choice == "row":
            image, k = self.rows[index]
        elif self.choice == "random":
            image = index % len(self.records)
            draw = np.random.default_rng([self.seed % 2**64, index])
            k = int(draw.integers(len(self.records[image][1])))
        else:
            image, k = index, 0
        path, texts = self.records[image]
        x = self.transform(_load_image(path, "RGB"))  # (3, S, S)
        return x, torch.tensor(0), texts[k]


def read_captions(path: Path, root: Path) -> Records:
    """A JSONL or CSV captions file -> (image path under ``root``, captions) per image, in the order
    of their first row; one ``ConfigError`` line for a row without an image or a caption."""
    by_image: dict[str, list[str]] = {}
    where = "line"
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"image", "caption"} <= set(reader.fieldnames or ()):
                raise ConfigError(
                    f"{path}: a CSV captions file needs the header columns image,caption "
                    f"(it has {','.join(reader.fieldnames or ())})"
                )
            rows = [(n + 2, row) for n, row in enumerate(reader)]  # line 1 is the header
    else:
        with open(path, encoding="utf-8") as f:
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise ConfigError(f"{path}, {where} {n}: not a JSON object ({err.msg})") from None
    for n, row in rows:
        image, text = (row.get("image"), row.get("caption")) if isinstance(row, dict) else (None, None)
        if not isinstance(image, str) or not image or not isinstance(text, str):
            raise ConfigError(
                f'{path}, {where} {n}: each row needs "image" (a path) and "caption" (a string)'
            )
        by_image.setdefault(str(root / image), []).append(text)
    if not by_image:
        raise ConfigError(f"{path} has no captions: write one row per (image, caption)")
    return list(by_image.items())


def _missing_images(records: Records, where: str) -> None:
    """One ``DataNotFoundError`` line naming the first missing image and how many are missing."""
    missing = [path for path, _ in records if not Path(path).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{len(missing)} image(s) listed in {where} are missing, e.g. {missing[0]!r}: "
            "put them there or remove their rows"
        )


class CaptionedImages(ImageDataModule):
    """A folder of images with a captions file (JSONL or CSV), split into train / val (/ test) by a
    seeded permutation of the images (module docstring).

    Args:
        root: The folder; image paths in the captions file are relative to it.
        captions: The captions file: ``.jsonl`` (JSON lines) or ``.csv``; relative to ``root``.
        image_size: Height and width after resizing the short side and centre cropping.
        caption_choice: Training items: ``"random"``, one per image with a caption drawn at random;
            ``"row"``, one per caption.
        val_size: Validation images (each with its first caption).
        test_size: Test images; 0 tests on the validation images.
        seed: Seed of the split and of the caption draws.
        batch_size: Images per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        random_flip: Flip each training image horizontally with probability 1/2 (a caption that says
            "left" or "right" is then wrong half the time).
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    collate_fn = staticmethod(collate_captioned)
    feature_extractor = "inception"

    def __init__(
        self,
        root: str,
        captions: str = "captions.jsonl",
        image_size: int = 64,
        caption_choice: Literal["random", "row"] = "random",
        val_size: int = 1000,
        test_size: int = 0,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
    ):
        super().__init__(batch_size, num_workers, val_size, seed, random_flip, predict_samples)
        check_counts(type(self).__name__, image_size=image_size, test_size=test_size)
        self.root, self.captions, self.image_size = root, captions, image_size
        self.caption_choice, self.test_size = caption_choice, test_size
        self.sample_shape = (3, image_size, image_size)
        self.num_classes = 0
        self.conditions = ("text",)
        self.text_vocabulary = None  # open vocabulary: bytes or the encoder's own tokenizer

    def identity(self) -> dict[str, Any]:
        """``ImageDataModule.identity()`` plus the folder's listing (file count and a digest of the
        relative paths, sizes and modification times), as ``ImageFolder``'s."""
        return {**super().identity(), **_listing(self.root)}

    def setup(self, stage: str | None = None) -> None:
        # predict draws samples from indices alone: it reads no file (a checkpoint predicts without data)
        if self.train_set is not None or stage == "predict":
            return
        if not self._captions_path().is_file():
            raise DataNotFoundError(
                f"No captions file {str(self._captions_path())!r}: write one (JSON lines "
                '{"image": <path under root>, "caption": <text>}, or CSV with columns image,caption) '
                "or pass --data.captions <its name under --data.root>"
            )
        records = read_captions(self._captions_path(), Path(self.root))
        _missing_images(records, str(self._captions_path()))
        train, val, test = (
            [records[i] for i in part.tolist()] for part in self._split(len(records), self.test_size)
        )
        self._set_records(train, val, test if self.test_size else val)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_set
        if not isinstance(dataset, CaptionedFiles):
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        order = EpochDraws(len(dataset)) if dataset.choice == "random" else None
        if order is not None:
            order.set_epoch(0)
        return training_loader(
            dataset, self.batch_size, self.num_workers, collate_fn=self.collate_fn, order=order
        )

    def _set_records(self, train: Records, val: Records, test: Records) -> None:
        made = functools.partial(CaptionedFiles, image_size=self.image_size, seed=self.seed)
        self.train_set = made(train, choice=self.caption_choice)
        self.val_set, self.test_set = made(val, choice="first"), made(test, choice="first")

    def _captions_path(self) -> Path:
        return Path(self.root) / self.captions


_COCO_HOST = "http://images.cocodataset.org"


class COCOCaptions(CaptionedImages):
    """COCO Captions (Chen et al. 2015, arXiv:1504.00325): about 118k training images (2017) with 5
    captions each; validation and test are disjoint parts of the 5k official validation images.

    Args:
        root: Folder holding (or receiving) ``annotations/``, ``train<year>/`` and ``val<year>/``.
        year: Release: 2017 (or 2014, the same layout).
        image_size: Height and width after resizing the short side and centre cropping.
        download: Download the missing archives into ``root`` in ``prepare_data`` (needs internet,
            about 19 GB for 2017).
        caption_choice: Training items: ``"random"``, one per image with one of its captions drawn at
            random; ``"row"``, one per caption.
        val_size: Validation images drawn from the official validation images by the seeded
            permutation; the rest of them are the test images.
        seed: Seed of the val / test split and of the caption draws.
        batch_size: Images per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        random_flip: Flip each training image horizontally with probability 1/2.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        root: str = "data/coco",
        year: Literal[2014, 2017] = 2017,
        image_size: int = 64,
        download: bool = True,
        caption_choice: Literal["random", "row"] = "random",
        val_size: int = 1000,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = False,
        predict_samples: int = 64,
    ):
        self.year, self.download = year, download
        super().__init__(
            root,
            f"annotations/captions_train{year}.json",
            image_size,
            caption_choice,
            val_size,
            0,
            seed,
            batch_size,
            num_workers,
            random_flip,
            predict_samples,
        )

    def identity(self) -> dict[str, Any]:
        """``ImageDataModule.identity()``: the official files are fixed, no listing of 120k files."""
        return ImageDataModule.identity(self)

    def _archives(self) -> dict[str, str]:
        """What sits under root once downloaded -> the archive it comes from."""
        y = self.year
        return {
            f"train{y}": f"{_COCO_HOST}/zips/train{y}.zip",
            f"val{y}": f"{_COCO_HOST}/zips/val{y}.zip",
            "annotations": f"{_COCO_HOST}/annotations/annotations_trainval{y}.zip",
        }

    def _required(self, stage: str | None) -> list[Path]:
        """The files and folders ``setup(stage)`` reads (test: the validation images only)."""
        root, y = Path(self.root), self.year
        val = [root / "annotations" / f"captions_val{y}.json", root / f"val{y}"]
        train = [root / "annotations" / f"captions_train{y}.json", root / f"train{y}"]
        return val if stage == "test" else [*train, *val]

    def write_folders(self) -> list[Folder]:
        """``root`` when ``download`` will fetch archives there."""
        if not self.download or not self._missing(None):
            return []
        return [
            Folder(
                "the COCO download folder (data.init_args.root)",
                Path(self.root),
                "pass --data.root <a writable folder>, or download COCO elsewhere, put it under "
                "--data.root and pass --data.download false",
            )
        ]

    def prepare_data(self) -> None:
        if not self.download:
            return
        for folder, url in self._archives().items():
            if (Path(self.root) / folder).is_dir():
                continue
            try:
                # nodes sharing root each run prepare_data: each extracts into its own temporary
                # folder, renamed into place whole (lit_genai.atomic)
                with atomic_folder(self.root, folder) as scratch:
                    download_and_extract_archive(url, str(scratch), remove_finished=True)
            except (OSError, RuntimeError) as err:  # URLError (no network) is an OSError
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                raise DataNotFoundError(
                    f"Downloading {url} into {self.root!r} failed ({reason}); {self._where()}"
                ) from err

    def setup(self, stage: str | None = None) -> None:
        need_train = stage != "test"
        if stage == "predict" or (
            self.val_set is not None and (self.train_set is not None or not need_train)
        ):
            return
        missing = self._missing(stage)
        if missing:
            found = "its download failed or is off" if self.download else "download is false"
            raise DataNotFoundError(
                f"COCO {self.year} captions not found ({found}): missing "
                f"{', '.join(repr(str(p)) for p in missing)}; {self._where()}"
            )
        root, y = Path(self.root), self.year
        val = _coco_records(root / "annotations" / f"captions_val{y}.json", root / f"val{y}")
        if self.val_size >= len(val):
            raise ConfigError(
                f"data.init_args.val_size={self.val_size} (COCOCaptions) leaves no test images of the "
                f"{len(val)} official validation images; lower it"
            )
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(self.seed)).tolist()
        val_part, test_part = order[: self.val_size], order[self.val_size :]
        train: Records = []
        if need_train:
            train = _coco_records(root / "annotations" / f"captions_train{y}.json", root / f"train{y}")
        self._set_records(train, [val[i] for i in val_part], [val[i] for i in test_part])
        if not need_train:
            self.train_set = None  # test only: no training images read

    def _missing(self, stage: str | None) -> list[Path]:
        return [p for p in self._required(stage) if not p.exists()]

    def _where(self) -> str:
        """What to put where, in one sentence."""
        root, y = self.root, self.year
        archives = self._archives()
        return (
            f"put captions_train{y}.json and captions_val{y}.json in {root}/annotations/ (from "
            f"{archives['annotations']}) and the images in {root}/train{y}/ and {root}/val{y}/ (from "
            f"{archives[f'train{y}']} and {archives[f'val{y}']}), then pass --data.download false"
        )


def _coco_records(annotations: Path, images: Path) -> Records:
    """An official ``captions_<split><year>.json`` -> (image path, captions) per image, by image id."""
    with open(annotations, encoding="utf-8") as f:
        data = json.load(f)
    captions: dict[int, list[str]] = {}
    for note in data["annotations"]:
        captions.setdefault(note["image_id"], []).append(note["caption"].strip())
    files = sorted((image["id"], image["file_name"]) for image in data["images"])
    return [(str(images / name), captions[i]) for i, name in files if i in captions]
