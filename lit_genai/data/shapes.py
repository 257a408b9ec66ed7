"""CaptionedShapes: captioned pictures of coloured shapes, procedural, offline and seeded.

Each picture is a background colour and one shape (``max_shapes: 2``: one or two, with equal
chance) with a shape, a colour, a size and a position; a shape's colour is never the background's.
Values: shapes circle, square, triangle, star; colours (shape and background) red, green, blue,
yellow, white, black; sizes small, large; positions top left, top right, bottom left, bottom right,
centre (a picture of two shapes uses two distinct corners, never the centre). Drawing and captions
are ``lit_genai.data.shape_render``: each picture gets one caption from one of several templates,
chosen per item ("a small red circle at the top left on a blue background", "blue background, red
circle, small, top left", ...; two shapes are joined by "and").

Held-out combinations (compositional generalisation): ``held_out`` is a list of rules, each a dict
attribute -> value over ``shape``, ``colour``, ``size``, ``position``, ``background`` (default: red
triangles, and circles on a yellow background). A picture matches a rule when one of its shapes
(with the picture's background) has every value of the rule. Matching pictures never occur in
``train_set``, ``val_set`` or ``test_set``; ``held_out_set`` holds only matching pictures.

Every split is drawn once in ``setup`` from its own generator, ``numpy.random.default_rng([seed,
split])`` (split 0 train, 1 val, 2 test, 3 held out), and kept in memory as uint8 images, attribute
indices and captions: the same seed gives byte-identical data in every process. Pictures sit at
fixed places, so the splits share pictures (they differ in which combinations and captions they
draw); the held-out set shares none with the others.

An item is ``(image, attrs, caption)`` and a batch (``collate_captioned``) is

    x      float32 (B, 3, S, S) in [-1, 1]     the pictures (S = image_size, 32 or 64)
    attrs  int64 (B, A)                        ground truth: attrs[:, a] indexes
                                               attribute_values[attribute_names[a]]
    text   list of B str                       the captions: the ``text`` condition

The second slot holds the ground-truth attributes, not class labels (``num_classes`` is 0).
``attribute_names`` is (shape, colour, size, position, background), or with ``max_shapes: 2``
(shape, colour, size, position, shape_2, colour_2, size_2, position_2, background), where the
second slot's values end with "none" (no second shape) and the two shapes are in the order of
``POSITIONS``. ``text_vocabulary`` is every word a caption can contain (``caption_words``).

Shape legend: B batch, N pictures of a split, A attributes, S side in pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_genai.data.checks import check_counts
from lit_genai.data.images import ImageDataModule
from lit_genai.data.shape_render import (
    COLOURS,
    NONE,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    Shape,
    caption,
    caption_vocabulary,
    render_indices,
)
from lit_genai.errors import ConfigError

__all__ = [
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "CaptionedShapes",
    "CaptionedShapeSet",
    "collate_captioned",
]

DEFAULT_HELD_OUT = ({"shape": "triangle", "colour": "red"}, {"shape": "circle", "background": "yellow"})
_SHAPE_ATTRIBUTES = ("shape", "colour", "size", "position")  # one shape's; then the background's
_VALUES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS, "background": COLOURS}
_SPLITS = {"train": 0, "val": 1, "test": 2, "held_out": 3}  # the split's index in its generator seed
_MAX_DRAWS = 200  # rounds of rejection sampling before the rules are declared unsatisfiable


def collate_captioned(items: list[tuple[Tensor, Tensor, str]]) -> tuple[Tensor, Tensor, list[str]]:
    """Items (image, y, caption) -> (images (B, ...), y (B, ...), captions as a list of B str): torch's
    default collate, but with a list of captions where it would give a tuple."""
    images, ys, captions = zip(*items, strict=True)
    return torch.stack(images), torch.stack(ys), list(captions)


class CaptionedShapeSet(Dataset):
    """A split in memory: item i is (image float32 (3, S, S) in [-1, 1], attrs int64 (A,), caption).

    Args:
        images: uint8 (N, 3, S, S).
        attributes: int64 (N, A).
        captions: N strings.
    """

    def __init__(self, images: Tensor, attributes: Tensor, captions: list[str]):
        self.images, self.attributes, self.captions = images, attributes, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, str]:
        return self.images[i].float() / 127.5 - 1, self.attributes[i], self.captions[i]


class CaptionedShapes(ImageDataModule):
    """Captioned pictures of one or two coloured shapes with held-out combinations (module docstring).

    Args:
        image_size: Side of the square pictures in pixels (32; 64 draws the same pictures finer).
        max_shapes: 1: one shape per picture; 2: one or two.
        held_out: Rules of the held-out combinations, each {attribute: value} over shape, colour,
            size, position, background; [] holds nothing out.
        train_size: Training pictures.
        val_size: Validation pictures.
        test_size: Test pictures.
        held_out_size: Pictures of ``held_out_set`` (every one matches a rule).
        seed: Seed of every split's pictures, captions and templates.
        batch_size: Pictures per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    collate_fn = staticmethod(collate_captioned)

    def __init__(
        self,
        image_size: int = 32,
        max_shapes: Literal[1, 2] = 1,
        held_out: Sequence[Mapping[str, str]] = DEFAULT_HELD_OUT,
        train_size: int = 20000,
        val_size: int = 1000,
        test_size: int = 1000,
        held_out_size: int = 1000,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        predict_samples: int = 64,
    ):
        # no random_flip: a flip would move a shape from left to right and falsify its caption
        super().__init__(batch_size, num_workers, val_size, seed, False, predict_samples)
        name = type(self).__name__
        check_counts(name, image_size=image_size, test_size=test_size)
        check_counts(name, train_size=train_size, held_out_size=held_out_size)
        if image_size < 16:
            raise ConfigError(f"data.init_args.image_size={image_size} ({name}) must be at least 16")
        if max_shapes not in (1, 2):
            raise ConfigError(f"data.init_args.max_shapes={max_shapes!r} ({name}) must be 1 or 2")
        self.image_size, self.max_shapes = image_size, max_shapes
        self.held_out = [_checked_rule(i, rule) for i, rule in enumerate(held_out)]
        self.train_size, self.test_size, self.held_out_size = train_size, test_size, held_out_size
        self.sample_shape = (3, image_size, image_size)
        self.num_classes = 0
        self.conditions = ("text",)
        if max_shapes == 1:
            self.attribute_names: tuple[str, ...] = (*_SHAPE_ATTRIBUTES, "background")
        else:
            second = tuple(f"{a}_2" for a in _SHAPE_ATTRIBUTES)
            self.attribute_names = (*_SHAPE_ATTRIBUTES, *second, "background")
        self.attribute_values: dict[str, tuple[str, ...]] = {
            a: _VALUES[a] if not a.endswith("_2") else (*_VALUES[a[:-2]], NONE) for a in self.attribute_names
        }
        self.text_vocabulary = caption_vocabulary(max_shapes)
        self.held_out_set: CaptionedShapeSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sizes = {"train": self.train_size, "val": self.val_size, "test": self.test_size}
        sets = {split: self._draw(split, n, held_out=False) for split, n in sizes.items()}
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]
        size = self.held_out_size if self.held_out else 0  # no rules: nothing to hold out
        self.held_out_set = self._draw("held_out", size, held_out=True)

    def held_out_dataloader(self) -> DataLoader:
        """``held_out_set`` in batches, as ``val_dataloader`` gives ``val_set``."""
        return self._loader(self.held_out_set)

    def describe(self, attrs: Tensor, template: int = 0) -> list[str]:
        """Captions of attribute rows (B, A) (as in batches) with ``TEMPLATES[template]``."""
        return [caption(*self._shapes(row), template) for row in torch.as_tensor(attrs).tolist()]

    def held_out_mask(self, attrs: Tensor) -> Tensor:
        """(B,) bool: which attribute rows (B, A) match a ``held_out`` rule."""
        return torch.from_numpy(self._matches(torch.as_tensor(attrs).cpu().numpy()))

    def _draw(self, split: str, n: int, held_out: bool) -> CaptionedShapeSet:
        """``n`` pictures of ``split`` that match a held-out rule (``held_out``) or match none."""
        rng = np.random.default_rng([self.seed % 2**64, _SPLITS[split]])
        kept: list[np.ndarray] = []
        count, rounds = 0, 0
        while count < n:
            if rounds == _MAX_DRAWS:
                raise ConfigError(
                    f"data.init_args.held_out={self.held_out} leaves (almost) no pictures for the {split} "
                    f"split of CaptionedShapes: make the rules match some pictures but not all"
                )
            rows = self._random_attributes(rng, max(2 * n, 256))  # (2n, A)
            rows = rows[self._matches(rows) == held_out]
            kept.append(rows)
            count, rounds = count + len(rows), rounds + 1
        attrs = np.concatenate(kept or [np.zeros((0, len(self.attribute_names)), np.int64)])[:n]  # (N, A)
        templates = rng.integers(len(TEMPLATES), size=n)  # (N,)
        captions = [
            caption(*self._shapes(row), int(t)) for row, t in zip(attrs.tolist(), templates, strict=True)
        ]
        return CaptionedShapeSet(self._render(attrs), torch.from_numpy(attrs), captions)

    def _random_attributes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, A) int64 attribute indices drawn uniformly under the module docstring's constraints."""
        background = rng.integers(len(COLOURS), size=n)  # (n,)
        # a shape's colour: uniform over the 5 colours that are not the background's
        first = (background + rng.integers(1, len(COLOURS), size=n)) % len(COLOURS)  # (n,)
        columns = [rng.integers(len(SHAPES), size=n), first, rng.integers(len(SIZES), size=n)]
        if self.max_shapes == 1:
            return np.stack([*columns, rng.integers(len(POSITIONS), size=n), background], 1)
        second_colour = (background + rng.integers(1, len(COLOURS), size=n)) % len(COLOURS)
        second = [rng.integers(len(SHAPES), size=n), second_colour, rng.integers(len(SIZES), size=n)]
        corners = np.sort(rng.permuted(np.tile(np.arange(4), (n, 1)), axis=1)[:, :2], axis=1)  # (n, 2)
        two = rng.random(n) < 0.5  # (n,)
        position = np.where(two, corners[:, 0], rng.integers(len(POSITIONS), size=n))
        none = [np.full(n, len(SHAPES)), np.full(n, len(COLOURS)), np.full(n, len(SIZES))]
        second = [np.where(two, s, e) for s, e in zip(second, none, strict=True)]
        position_2 = np.where(two, corners[:, 1], len(POSITIONS))
        return np.stack([*columns, position, *second, position_2, background], 1)

    def _slots(self, attrs: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per shape slot: {attribute: (N,) indices} over shape, colour, size, position, background."""
        column = {name: attrs[:, i] for i, name in enumerate(self.attribute_names)}
        suffixes = [""] if self.max_shapes == 1 else ["", "_2"]
        return [
            {**{a: column[a + suffix] for a in _SHAPE_ATTRIBUTES}, "background": column["background"]}
            for suffix in suffixes
        ]

    def _matches(self, attrs: np.ndarray) -> np.ndarray:
        """(N,) bool: a shape of the picture (with its background) has every value of some rule."""
        hit = np.zeros(len(attrs), bool)
        for slot in self._slots(attrs):
            present = slot["shape"] < len(SHAPES)
            for rule in self.held_out:
                match = present.copy()
                for attribute, value in rule.items():
                    match &= slot[attribute] == _VALUES[attribute].index(value)
                hit |= match
        return hit

    def _render(self, attrs: np.ndarray) -> Tensor:
        """uint8 (N, 3, S, S) pictures of attribute rows (N, A)."""
        slots = self._slots(attrs)
        parts = [np.stack([s[a] for s in slots], 1) for a in _SHAPE_ATTRIBUTES]  # 4 x (N, K)
        return render_indices(*parts, slots[0]["background"], self.image_size)

    def _shapes(self, row: list[int]) -> tuple[list[Shape], str]:
        """One attribute row -> (its shapes by name, its background's name)."""
        value = {
            name: self.attribute_values[name][i] for name, i in zip(self.attribute_names, row, strict=True)
        }
        suffixes = [""] if self.max_shapes == 1 else ["", "_2"]
        shapes = [Shape(*(value[a + suffix] for a in _SHAPE_ATTRIBUTES)) for suffix in suffixes]
        return [s for s in shapes if s.shape != NONE], value["background"]


def _checked_rule(i: int, rule: Mapping[str, str]) -> dict[str, str]:
    """A held-out rule as a plain dict, or one ``ConfigError`` line naming what is wrong in it."""
    key = f"data.init_args.held_out[{i}]"
    if not isinstance(rule, Mapping) or not rule:
        raise ConfigError(f"{key}={rule!r} must be a non-empty mapping attribute -> value")
    for attribute, value in rule.items():
        if attribute not in _VALUES:
            raise ConfigError(f"{key}: unknown attribute {attribute!r}; use one of {', '.join(_VALUES)}")
        if value not in _VALUES[attribute]:
            raise ConfigError(
                f"{key}: {attribute}={value!r} is not a value; use one of {', '.join(_VALUES[attribute])}"
            )
    return {str(a): str(v) for a, v in rule.items()}
