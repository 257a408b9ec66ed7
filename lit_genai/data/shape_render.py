"""Drawing and describing the pictures of ``CaptionedShapes`` (``lit_genai.data.shapes``): pure functions.

A picture is a background colour and one or two shapes, each a (shape, colour, size, position).
Shapes sit at fixed places (the four quadrant centres and the image centre) with two radii
(5/32 and 8/32 of the side: 5 and 8 pixels at 32x32, so a small star still shows its five points).
Each shape is drawn once per (shape, size, position, side) as an anti-aliased coverage mask: the
fraction of a 4x4 grid of points in each pixel that lie inside the shape (supersampling, exact and
symmetric, as drawing at 4x and averaging 4x4 blocks). A picture
is the background blended with each shape's colour through its mask, so rendering N pictures is a
few vectorised numpy operations over a table of 40 masks: 20k pictures take well under a second.

Pictures are given as index arrays into the value tuples below (``render_indices``) or as
``Shape`` tuples of names (``render``, one picture). A slot whose shape index is ``len(SHAPES)``
(the value "none") is empty.

Captions come from ``TEMPLATES``, which differ in word order and punctuation; every word of every
caption (``lit_genai.data.tokenizers.caption_words``) names an attribute value or is one of the
templates' few fixed words (``caption_vocabulary``).

Shape legend: N pictures, K shape slots per picture (1 or 2), S side in pixels, 3 RGB channels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lit_genai.data.tokenizers import caption_words

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre")
NONE = "none"  # the value of an empty second slot

# Saturated, well separated colours: the attribute classifier must tell them apart after a
# generative model's colour drift.
RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 210, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
_SUPERSAMPLE = 4  # draw at 4x the side, then average 4x4 blocks: anti-aliased edges
_RADIUS = {"small": 5 / 32, "large": 8 / 32}  # fraction of the side
_CENTRE = {  # (x, y) as fractions of the side
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "centre": (0.5, 0.5),
}


class Shape(NamedTuple):
    """One shape of a picture, by value names (``SHAPES``, ``COLOURS``, ``SIZES``, ``POSITIONS``)."""

    shape: str
    colour: str
    size: str
    position: str


def _outline(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """(P, 2) polygon corners (x, y) of a square, triangle or star of radius r centred on (cx, cy)."""
    if shape == "square":  # half side 0.85 r: about the area of the circle of radius r
        h = 0.85 * r
        corners = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":  # apex up, as wide as tall: fills the shape's box like the others
        corners = [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    else:  # star: 5 points on radius r, inner corners at r / 2 (fat enough to read at 5 pixels)
        corners = [
            (cx + rad * math.sin(k * math.pi / 5), cy - rad * math.cos(k * math.pi / 5))
            for k, rad in enumerate([r, 0.5 * r] * 5)
        ]
    return np.array(corners, np.float64)


def _inside_polygon(x: np.ndarray, y: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to its right crosses the outline an odd number of times."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        spans = (y0 > y) != (y1 > y)  # the edge straddles the point's row
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = x0 + (y - y0) * (x1 - x0) / (y1 - y0)  # where the edge meets that row
        inside ^= spans & (x < crossing)
    return inside


@functools.cache
def coverage(shape: str, size: str, position: str, image_size: int) -> np.ndarray:
    """How much of each pixel the shape covers, (S, S) float32 in [0, 1] (read-only, cached):
    the fraction of a 4x4 grid of points inside each pixel that fall inside the shape."""
    k = _SUPERSAMPLE
    points = (np.arange(image_size * k) + 0.5) / k  # (4S,) point coordinates in pixels
    x, y = np.meshgrid(points, points)  # (4S, 4S) each: x across, y down
    cx, cy = (f * image_size for f in _CENTRE[position])
    r = _RADIUS[size] * image_size
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    else:
        inside = _inside_polygon(x, y, _outline(shape, cx, cy, r))
    mask = inside.reshape(image_size, k, image_size, k).mean(axis=(1, 3)).astype(np.float32)  # (S, S)
    mask.flags.writeable = False
    return mask


def _mask_table(image_size: int) -> np.ndarray:
    """(|SHAPES|+1, |SIZES|, |POSITIONS|, S, S) coverage of every shape; the "none" row is empty."""
    table = np.zeros((len(SHAPES) + 1, len(SIZES), len(POSITIONS), image_size, image_size), np.float32)
    for i, shape in enumerate(SHAPES):
        for j, size in enumerate(SIZES):
            for k, position in enumerate(POSITIONS):
                table[i, j, k] = coverage(shape, size, position, image_size)
    return table


def render_indices(
    shape: np.ndarray,
    colour: np.ndarray,
    size: np.ndarray,
    position: np.ndarray,
    background: np.ndarray,
    image_size: int = 32,
    chunk: int = 2048,
) -> Tensor:
    """Pictures from value indices -> uint8 (N, 3, S, S).

    Args:
        shape, colour, size, position: (N, K) int indices into ``SHAPES`` (``len(SHAPES)`` = an empty
            slot, whose other indices are then ignored), ``COLOURS``, ``SIZES``, ``POSITIONS``.
            Slots are painted in order (a later one covers an earlier one where they overlap).
        background: (N,) indices into ``COLOURS``.
        image_size: S.
        chunk: Pictures blended at once (bounds the float32 working memory).
    """
    table = _mask_table(image_size)  # (|SHAPES|+1, |SIZES|, |POSITIONS|, S, S)
    rgb = np.array([RGB[c] for c in COLOURS], np.float32)  # (|COLOURS|, 3)
    n, slots = np.shape(shape)
    out = np.empty((n, 3, image_size, image_size), np.uint8)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        img = rgb[background[part]][:, :, None, None]  # (n, 3, 1, 1): the background, broadcast below
        for k in range(slots):
            s = np.minimum(shape[part, k], len(SHAPES))  # len(SHAPES): the empty mask
            z = np.minimum(size[part, k], len(SIZES) - 1)  # an empty slot's "none" indices: any row
            p = np.minimum(position[part, k], len(POSITIONS) - 1)
            m = table[s, z, p][:, None]  # (n, 1, S, S)
            c = rgb[np.minimum(colour[part, k], len(COLOURS) - 1)][:, :, None, None]  # (n, 3, 1, 1)
            img = img * (1 - m) + c * m  # (n, 3, S, S)
        img = np.broadcast_to(img, (len(range(n)[part]), 3, image_size, image_size))
        out[part] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return torch.from_numpy(out)


def render(shapes: Sequence[Shape], background: str, image_size: int = 32) -> Tensor:
    """One picture: ``shapes`` painted in order on ``background`` -> uint8 (3, S, S)."""
    index = [
        [[SHAPES.index(s.shape) for s in shapes]],
        [[COLOURS.index(s.colour) for s in shapes]],
        [[SIZES.index(s.size) for s in shapes]],
        [[POSITIONS.index(s.position) for s in shapes]],
    ]
    arrays = [np.array(a, np.int64).reshape(1, len(shapes)) for a in index]
    return render_indices(*arrays, np.array([COLOURS.index(background)]), image_size)[0]


def _where(position: str, corner: bool) -> str:
    """'top left' -> 'the top left' (or 'the top left corner'); 'centre' -> 'the centre'."""
    return f"the {position} corner" if corner and position != "centre" else f"the {position}"


# Each template: (one shape's description, the whole caption around the descriptions joined by " and ").
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("a {size} {colour} {shape} at {at}", "{shapes} on a {background} background"),
    ("{colour} {shape}, {size}, {position}", "{background} background, {shapes}"),
    ("a {colour} {shape} ({size}) in {corner}", "{shapes}, {background} background"),
    ("a {size} {colour} {shape} in {corner}", "a {background} background with {shapes}"),
    ("{position}: {size} {colour} {shape}", "{shapes}; background {background}"),
)


def caption(shapes: Sequence[Shape], background: str, template: int = 0) -> str:
    """The caption of a picture with ``TEMPLATES[template]``, e.g. (template 0)
    ``"a small red circle at the top left on a blue background"``; two shapes are joined by "and"."""
    one, whole = TEMPLATES[template]
    parts = [
        one.format(
            size=s.size,
            colour=s.colour,
            shape=s.shape,
            position=s.position,
            at=_where(s.position, corner=False),
            corner=_where(s.position, corner=True),
        )
        for s in shapes
    ]
    return whole.format(shapes=" and ".join(parts), background=background)


def caption_vocabulary(max_shapes: int = 1) -> list[str]:
    """Every word (``caption_words``) any caption of up to ``max_shapes`` shapes can contain, sorted."""
    words: set[str] = set()
    for template in range(len(TEMPLATES)):
        for shape in SHAPES:
            for position in POSITIONS:
                for size in SIZES:
                    first = Shape(shape, COLOURS[0], size, position)
                    second = [Shape(shape, COLOURS[0], size, POSITIONS[0])] if max_shapes > 1 else []
                    for background in COLOURS:
                        for colour in COLOURS:
                            pair = [first._replace(colour=colour), *second]
                            words.update(caption_words(caption(pair, background, template)))
    return sorted(words)
