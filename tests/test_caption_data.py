"""Captioned image files: a folder with a JSONL or CSV captions file, COCO's layout and its offline errors."""

import csv
import json
import sys
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli
from PIL import Image

from lit_genai.data import CaptionedImages, COCOCaptions
from lit_genai.data import captions as captions_module
from lit_genai.data.order import epoch_order
from lit_genai.errors import ConfigError, DataNotFoundError

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
RGB = [(220, 30, 30), (30, 170, 50), (30, 70, 230), (245, 210, 20), (245, 245, 245), (15, 15, 15)]


@pytest.fixture()
def folder(tmp_path):
    """6 PNGs of one colour each (40x30: not square), 2 captions per image, as JSONL and CSV."""
    rows = []
    for i, (name, rgb) in enumerate(zip(COLOURS, RGB, strict=True)):
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), rgb).save(tmp_path / "img" / f"{i}.png")
        rows += [
            {"image": f"img/{i}.png", "caption": f"a {name} square"},
            {"image": f"img/{i}.png", "caption": name},
        ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def _colour_of(x: torch.Tensor) -> str:
    """The name of the colour of an image (3, S, S) in [-1, 1]."""
    rgb = ((x.mean((1, 2)) + 1) * 127.5).round().tolist()
    distances = [sum((a - b) ** 2 for a, b in zip(rgb, ref, strict=True)) for ref in RGB]
    return COLOURS[int(np.argmin(distances))]


@pytest.mark.parametrize("file", ["captions.jsonl", "captions.csv"])
def test_batches_pair_each_image_with_one_of_its_captions(folder, file):
    dm = CaptionedImages(str(folder), captions=file, image_size=16, val_size=2, batch_size=4)
    assert dm.sample_shape == (3, 16, 16) and dm.num_classes == 0 and dm.conditions == ("text",)
    assert dm.text_vocabulary is None
    dm.setup("fit")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [4, 2, 2]  # images, not rows
    x, y, text = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 0, 0]
    assert isinstance(text, list) and len(text) == 4
    for image, caption in zip(x, text, strict=True):
        assert caption.split()[-2 if caption.startswith("a ") else 0] == _colour_of(image)
    val = next(iter(dm.val_dataloader()))[2]
    assert all(c.startswith("a ") for c in val)  # evaluation: the first caption of each image
    assert set(dm.identity()) >= {"root", "captions", "image_size", "seed", "num_files", "listing"}


def test_random_captions_differ_by_epoch_and_resume_exactly(folder):
    dm = CaptionedImages(str(folder), image_size=8, val_size=1, batch_size=5, seed=3)
    dm.setup("fit")

    def epoch(e: int, skip: int = 0) -> list[str]:
        loader = dm.train_dataloader()
        epoch_order(loader).set_epoch(e)
        epoch_order(loader).skip(skip)
        return [c for batch in loader for c in batch[2]]

    first, second = epoch(0), epoch(1)
    assert len(first) == 5 and first == epoch(0)  # the same draws when the epoch is replayed
    assert first != second  # another epoch: another order and other captions
    draws = [epoch(e) for e in range(8)]
    assert {len(c.split()) for d in draws for c in d} == {1, 3}  # both captions of the images occur
    assert epoch(1, skip=2)[:3] == second[2:]  # a resumed epoch continues with the same captions


def test_row_choice_sees_every_caption_once_per_epoch(folder):
    dm = CaptionedImages(
        str(folder), image_size=8, val_size=1, test_size=1, caption_choice="row", batch_size=16
    )
    dm.setup("fit")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8, 1, 1]  # 4 images x 2 captions
    text = next(iter(dm.train_dataloader()))[2]
    assert len(text) == 8 and len(set(text)) == 8
    test_image = dm.test_set.records[0][0]
    assert all(test_image != path for path, _ in dm.train_set.records + dm.val_set.records)


def test_random_flip_keeps_the_captions(folder):
    dm = CaptionedImages(str(folder), image_size=8, val_size=1, random_flip=True)
    dm.trainer = SimpleNamespace(training=True)
    x = torch.linspace(-1, 1, 8).expand(200, 3, 8, 8)  # (B, 3, 8, 8): a ramp, left to right
    y, text = torch.zeros(200, dtype=torch.long), [f"caption {i}" for i in range(200)]
    out, out_y, out_text = dm.on_after_batch_transfer((x, y, text), 0)
    assert out_y is y and out_text is text
    assert 0.3 < (out[:, 0, 0, 0] > 0).float().mean() < 0.7


def test_bad_captions_files_are_one_line(folder):
    (folder / "bad.csv").write_text("path,text\nimg/0.png,red\n")
    with pytest.raises(ConfigError, match="needs the header columns image,caption"):
        CaptionedImages(str(folder), captions="bad.csv", val_size=1).setup("fit")
    (folder / "bad.jsonl").write_text('{"image": "img/0.png", "caption": "red"}\n{"image": "img/1.png"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2: each row needs"):
        CaptionedImages(str(folder), captions="bad.jsonl", val_size=1).setup("fit")
    (folder / "gone.jsonl").write_text('{"image": "img/9.png", "caption": "red"}\n' * 3)
    with pytest.raises(DataNotFoundError, match=r"1 image\(s\) listed in .*gone.jsonl are missing"):
        CaptionedImages(str(folder), captions="gone.jsonl", val_size=0).setup("fit")
    with pytest.raises(DataNotFoundError, match="No captions file"):
        CaptionedImages(str(folder), captions="none.jsonl").setup("fit")
    CaptionedImages(str(folder), captions="none.jsonl").setup("predict")  # predict reads no file


def _coco(root, split: str, names: list[str]) -> None:
    """A tiny stand-in of COCO's layout: images and the captions file of one split."""
    (root / f"{split}2017").mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, notes = [], []
    for i, name in enumerate(names):
        Image.new("RGB", (24, 20), RGB[COLOURS.index(name)]).save(root / f"{split}2017" / f"{i:012d}.jpg")
        images.append({"id": 100 + i, "file_name": f"{i:012d}.jpg"})
        notes += [
            {"image_id": 100 + i, "caption": f"A {name} photo. "},
            {"image_id": 100 + i, "caption": name},
        ]
    (root / "annotations" / f"captions_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": notes})
    )


def test_coco_reads_the_official_layout(tmp_path):
    _coco(tmp_path, "train", COLOURS)
    _coco(tmp_path, "val", COLOURS[:4])
    dm = COCOCaptions(str(tmp_path), image_size=8, download=False, val_size=1, batch_size=6)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [6, 1, 3]
    x, y, text = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0] * 6 and len(text) == 6
    for image, caption in zip(x, text, strict=True):
        assert _colour_of(image) in caption
    assert next(iter(dm.test_dataloader()))[2][0].startswith("A ")  # first caption, stripped
    test_only = COCOCaptions(str(tmp_path), image_size=8, download=False, val_size=1)
    (tmp_path / "annotations" / "captions_train2017.json").unlink()
    test_only.setup("test")  # test needs the validation images only
    assert test_only.train_set is None and len(test_only.test_set) == 3


def test_coco_missing_files_say_what_to_put_where(tmp_path):
    root = tmp_path / "coco"
    with pytest.raises(DataNotFoundError) as error:
        COCOCaptions(str(root), download=False).setup("fit")
    message = str(error.value)
    assert "\n" not in message and "download is false" in message
    for path in (
        "annotations/captions_train2017.json",
        "annotations/captions_val2017.json",
        "train2017",
        "val2017",
    ):
        assert str(root / path) in message
    assert "http://images.cocodataset.org/zips/train2017.zip" in message


def test_coco_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, download_root, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(captions_module, "download_and_extract_archive", offline)
    dm = COCOCaptions(str(tmp_path / "coco"))  # download true by default
    assert [f.path for f in dm.write_folders()] == [tmp_path / "coco"]
    with pytest.raises(DataNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert "\n" not in message and "Temporary failure" in message
    assert (
        f"put captions_train2017.json and captions_val2017.json in {tmp_path / 'coco'}/annotations/"
        in message
    )
    assert list((tmp_path / "coco").iterdir()) == []  # no half-written folder


def test_coco_download_fills_the_layout(tmp_path, monkeypatch):
    _coco(tmp_path / "src", "train", ["red", "blue"])
    _coco(tmp_path / "src", "val", ["green", "white"])

    def fake(url, download_root, **kwargs):  # "extracts" the stand-in's folder of that archive
        name = url.rsplit("/", 1)[1].removesuffix(".zip")
        name = "annotations" if name.startswith("annotations") else name
        (tmp_path / "src" / name).rename(f"{download_root}/{name}")

    monkeypatch.setattr(captions_module, "download_and_extract_archive", fake)
    dm = COCOCaptions(str(tmp_path / "coco"), image_size=8, val_size=1)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [2, 1, 1]
    assert dm.write_folders() == []
    dm.prepare_data()  # all there: nothing downloaded again


def test_cli_offline_coco_is_one_line(tmp_path, capsys):
    model = {
        "class_path": "lit_genai.diffusion.Diffusion",
        "init_args": {
            "net": {
                "class_path": "lit_genai.nn.UNet",
                "init_args": {"in_channels": 3, "base_channels": 8, "channel_mult": [1, 2], "num_groups": 4},
            }
        },
    }
    data = {"class_path": "lit_genai.data.COCOCaptions", "init_args": {"root": str(tmp_path / "coco")}}
    trainer = {"logger": False, "default_root_dir": str(tmp_path / "run"), "max_steps": 1}
    config = tmp_path / "coco.yaml"
    config.write_text(yaml.safe_dump({"model": model, "data": data, "trainer": trainer}))
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        code = run_cli(["fit", "--config", str(config), "--data.download", "false"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("lit-genai: error: COCO 2017 captions not found") and "train2017" in err
