"""CaptionedShapes: seeded splits, held-out combinations, captions that say the attributes, the CLI."""

import sys
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli

from lit_genai.data import CaptionedShapes
from lit_genai.data.shape_render import COLOURS, POSITIONS, SHAPES, SIZES, Shape, caption, render
from lit_genai.data.shapes import CaptionedShapeSet
from lit_genai.data.tokenizers import caption_words
from lit_genai.errors import ConfigError

SMALL = dict(train_size=600, val_size=100, test_size=100, held_out_size=100)


def _made(**kwargs) -> CaptionedShapes:
    dm = CaptionedShapes(**{**SMALL, **kwargs})
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def one() -> CaptionedShapes:
    return _made()


@pytest.fixture(scope="module")
def two() -> CaptionedShapes:
    return _made(max_shapes=2)


def _splits(dm: CaptionedShapes) -> dict[str, CaptionedShapeSet]:
    return {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set, "held_out": dm.held_out_set}


def _named(dm: CaptionedShapes, row: list[int]) -> dict[str, str]:
    return {name: dm.attribute_values[name][i] for name, i in zip(dm.attribute_names, row, strict=True)}


def _suffixes(dm: CaptionedShapes) -> list[str]:
    return ["", "_2"] if dm.max_shapes == 2 else [""]


def test_caption_words_lower_cases_and_splits_on_whitespace_and_commas():
    assert caption_words("Blue background,  red circle, small,top left") == [
        "blue", "background", "red", "circle", "small", "top", "left",
    ]  # fmt: skip
    assert caption_words("a red circle (small) in the centre.") == [
        "a", "red", "circle", "small", "in", "the", "centre",
    ]  # fmt: skip
    assert caption_words("") == [] and caption_words(" , ") == []


def test_same_seed_gives_identical_data_and_another_seed_other_data(one):
    again, other = _made(), _made(seed=1)
    for split, data in _splits(one).items():
        same = _splits(again)[split]
        assert torch.equal(data.images, same.images), split
        assert torch.equal(data.attributes, same.attributes) and data.captions == same.captions, split
        assert not torch.equal(data.attributes, _splits(other)[split].attributes), split
    assert one.identity() == again.identity() != other.identity()
    assert one.identity()["held_out"] != _made(held_out=[{"shape": "star"}]).identity()["held_out"]


@pytest.mark.parametrize("dm", ["one", "two"])
def test_held_out_combinations_never_occur_outside_the_held_out_set(dm, request):
    dm = request.getfixturevalue(dm)
    assert [len(s) for s in _splits(dm).values()] == [600, 100, 100, 100]
    for split, data in _splits(dm).items():
        rows = [_named(dm, r) for r in data.attributes.tolist()]
        shapes = [[(r[f"shape{k}"], r[f"colour{k}"], r["background"]) for k in _suffixes(dm)] for r in rows]
        red_triangle = [("triangle", "red") in [(s, c) for s, c, _ in picture] for picture in shapes]
        yellow_circle = [("circle", "yellow") in [(s, b) for s, _, b in picture] for picture in shapes]
        held = [a or b for a, b in zip(red_triangle, yellow_circle, strict=True)]
        assert all(held) if split == "held_out" else not any(held), split
        assert dm.held_out_mask(data.attributes).tolist() == held, split
    seen = {r["shape"] for r in map(lambda r: _named(dm, r), dm.held_out_set.attributes.tolist())}
    assert {"triangle", "circle"} <= seen  # both rules are drawn


def test_every_caption_says_its_attributes(one):
    positions = {p: set(p.split()) for p in POSITIONS}
    for data in _splits(one).values():
        for row, text in zip(data.attributes.tolist(), data.captions, strict=True):
            value, words = _named(one, row), caption_words(text)
            assert value["colour"] != value["background"]
            assert words[words.index("background") - 1] == value["background"] or (
                words[words.index("background") + 1] == value["background"]  # "...; background green"
            ), text
            assert {value["shape"], value["size"], value["colour"]} <= set(words), text
            assert set(words) & set(SHAPES) == {value["shape"]} and set(words) & set(SIZES) == {value["size"]}
            assert set(words) & set(COLOURS) == {value["colour"], value["background"]}, text
            where = set(words) & {"top", "bottom", "left", "right", "centre"}
            assert where == positions[value["position"]], text
    templates = {caption_words(c)[0] for c in one.train_set.captions}
    assert len(templates) >= 4  # several templates, chosen per item


def test_two_shape_pictures_use_two_corners_and_name_both(two):
    rows = [_named(two, r) for r in two.train_set.attributes.tolist()]
    pairs = [r for r in rows if r["shape_2"] != "none"]
    assert 0.35 < len(pairs) / len(rows) < 0.65
    for r in pairs:
        assert r["position"] != r["position_2"] and "centre" not in (r["position"], r["position_2"])
        assert POSITIONS.index(r["position"]) < POSITIONS.index(r["position_2"])
        assert r["background"] not in (r["colour"], r["colour_2"])
    for r in rows:
        if r["shape_2"] == "none":
            assert r["colour_2"] == r["size_2"] == r["position_2"] == "none"
    for row, text in zip(two.train_set.attributes.tolist(), two.train_set.captions, strict=True):
        r = _named(two, row)
        words = set(caption_words(text))
        assert ("and" in words) == (r["shape_2"] != "none"), text
        assert {r["shape"], r["colour"], r["background"]} <= words, text
        if r["shape_2"] != "none":
            assert {r["shape_2"], r["colour_2"], r["size_2"]} <= words, text


def test_text_vocabulary_covers_every_caption(one, two):
    for dm in (one, two):
        vocabulary = set(dm.text_vocabulary)
        assert dm.text_vocabulary == sorted(vocabulary)
        for data in _splits(dm).values():
            assert all(set(caption_words(c)) <= vocabulary for c in data.captions)
    assert "and" not in one.text_vocabulary and "and" in two.text_vocabulary


def test_train_batches_follow_the_layout(one):
    assert one.sample_shape == (3, 32, 32) and one.num_classes == 0 and one.conditions == ("text",)
    assert one.attribute_names == ("shape", "colour", "size", "position", "background")
    x, attrs, captions = next(iter(one.train_dataloader()))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert attrs.shape == (128, 5) and attrs.dtype == torch.int64
    assert isinstance(captions, list) and len(captions) == 128 and all(isinstance(c, str) for c in captions)
    images = one.decode(x)  # uint8, back to the stored pixels exactly
    assert images.dtype == torch.uint8 and (images[0] == one.train_set.images).flatten(1).all(1).any()
    assert one.describe(attrs[:1], template=0)[0].startswith("a ")
    assert set(one.state_dict()) == {"decoder"}
    assert next(iter(one.predict_dataloader())).tolist() == list(range(64))
    x, attrs, captions = next(iter(one.held_out_dataloader()))
    assert x.shape == (100, 3, 32, 32) and attrs.shape == (100, 5) and len(captions) == 100


def test_the_picture_shows_the_attributes():
    """Pixels of the shape's colour around its position, the background's elsewhere; 64 draws the same."""
    for size in (32, 64):
        image = render([Shape("square", "red", "large", "top left")], "blue", size)  # (3, S, S)
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        q = size // 4
        assert image[:, q, q].tolist() == [220, 30, 30]  # the top left quadrant's centre
        assert image[:, 3 * q, 3 * q].tolist() == [30, 70, 230]
        edge = image[0].float()  # anti-aliased: some red values between the two colours
        assert ((edge > 30) & (edge < 220)).any()
    small = render([Shape("star", "white", "small", "centre")], "black", 32)
    assert 20 < int((small[0] > 128).sum()) < 80  # a small star covers a few dozen pixels
    assert caption([Shape("circle", "red", "small", "top left")], "blue") == (
        "a small red circle at the top left on a blue background"
    )


def test_image_size_64_and_two_shapes_batch():
    dm = CaptionedShapes(image_size=64, max_shapes=2, train_size=40, val_size=8, test_size=8, held_out_size=8)
    dm.setup("fit")
    x, attrs, captions = next(iter(dm.train_dataloader()))
    assert x.shape == (40, 3, 64, 64) and attrs.shape == (40, 9) and len(captions) == 40
    assert dm.attribute_values["shape_2"][-1] == "none"


def test_no_rules_hold_nothing_out():
    dm = _made(held_out=[])
    assert len(dm.held_out_set) == 0
    shapes = {_named(dm, r)["shape"] for r in dm.train_set.attributes.tolist()}
    assert shapes == set(SHAPES)


def test_bad_rules_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"held_out\[0\]: shape='hexagon' is not a value"):
        CaptionedShapes(held_out=[{"shape": "hexagon"}])
    with pytest.raises(ConfigError, match=r"held_out\[1\]: unknown attribute 'hue'"):
        CaptionedShapes(held_out=[{"shape": "star"}, {"hue": "red"}])
    dm = CaptionedShapes(held_out=[{"size": "small"}, {"size": "large"}], **SMALL)  # holds out everything
    with pytest.raises(ConfigError, match="leaves \\(almost\\) no pictures for the train split"):
        dm.setup("fit")


def test_render_speed_and_rejection_keep_setup_fast():
    import time

    start = time.perf_counter()
    _made(train_size=20000)
    assert time.perf_counter() - start < 10  # about a second on one core


def test_cli_instantiates_it_and_a_bad_rule_is_one_line(tmp_path, capsys):
    from lit_genai.cli import LitGenAICLI

    model = {
        "class_path": "lit_genai.diffusion.Diffusion",
        "init_args": {
            "net": {
                "class_path": "lit_genai.nn.UNet",
                "init_args": {"in_channels": 3, "base_channels": 8, "channel_mult": [1, 2], "num_groups": 4},
            }
        },
    }
    data = {"class_path": "lit_genai.data.CaptionedShapes", "init_args": {"max_shapes": 2, "seed": 3}}
    config = tmp_path / "shapes.yaml"
    config.write_text(yaml.safe_dump({"model": model, "data": data, "trainer": {"logger": False}}))
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        cli = LitGenAICLI(
            args=["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False
        )
    assert isinstance(cli.datamodule, CaptionedShapes) and cli.datamodule.max_shapes == 2
    assert cli.datamodule.held_out == [
        {"shape": "triangle", "colour": "red"},
        {"shape": "circle", "background": "yellow"},
    ]
    assert tuple(cli.model.sample_shape) == (3, 32, 32)  # linked from the data
    capsys.readouterr()
    code = run_cli(["fit", "--config", str(config), "--data.held_out", '[{"colour": "purple"}]'])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "data.init_args.held_out[0]: colour='purple' is not a value" in err


def test_held_out_rule_on_position_and_size(one):
    dm = _made(held_out=[{"position": "centre", "size": "large"}], held_out_size=50)
    for split, data in _splits(dm).items():
        rows = [_named(dm, r) for r in data.attributes.tolist()]
        held = np.array([r["position"] == "centre" and r["size"] == "large" for r in rows])
        assert held.all() if split == "held_out" else not held.any(), split
