"""Binarisation of grey-level images for Bernoulli likelihoods (binarised MNIST).

A Bernoulli decoder models binary pixels; MNIST is grey. Three conventions are in use:

- ``"dynamic"``: every pixel is drawn afresh, ``Bernoulli((x + 1) / 2)``, each time an image is seen
  (Burda et al. 2016, "Importance Weighted Autoencoders", sec. 5.1: "binarized ... stochastically";
  it acts as data augmentation, and each pixel's expected value is its grey level);
- ``"static"``: one fixed Bernoulli draw per image, as in the fixed binarised MNIST of Salakhutdinov
  & Murray 2008 / Larochelle & Murray 2011. Here the draw is a deterministic function of the image's
  content, so an image gets the same binary version in any batch, order, run or device, and no table
  of binarised images has to be stored;
- ``"threshold"``: ``(x + 1) / 2 > 0.5``, deterministic and coarser.

Static draws. The uniform noise of pixel j of an image is an integer hash of (the image's content
hash, j): the content hash is the sum over pixels of ``hash32(256 j + k_j)`` (k_j its uint8 value,
j its flat index), the pixel noise ``hash32(hash32(content) + 0x9E3779B9 * (j + 1))``, both mod
2^32, with ``hash32`` the "lowbias32" integer finaliser (C. Wellons, "Prospecting for hash
functions", 2018). The 24 top bits give u_j in [0, 1), compared with the grey level as in the
dynamic draw. Everything is exact int64 arithmetic on the images' device (no product exceeds
2^49), so CPU and GPU agree bit for bit.

Shapes: x (B, C, H, W) (any (B, ...) works); values in [-1, 1]; the output has x's shape, dtype
and device, with values in {-1, 1}.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

Binarization = Literal["dynamic", "static", "threshold"]
MODES: tuple[Binarization, ...] = ("dynamic", "static", "threshold")

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive pixel indices over the 32-bit range


def binarize(
    x: Tensor,
    mode: Binarization,
    generator: Optional[torch.Generator] = None,
    *,
    uniform: Optional[Tensor] = None,
) -> Tensor:
    """Binary version of images in [-1, 1]: -1 (black) or 1 (white).

    Args:
        x: (B, ...) images in [-1, 1] (values outside are clipped).
        mode: ``"dynamic"``, ``"static"`` or ``"threshold"`` (module docstring).
        generator: ``"dynamic"`` only: the generator of the draw (global RNG if None). The noise is
            drawn on the generator's device and moved, so a CPU generator gives the same result on
            any device.
        uniform: ``"dynamic"`` only: U(0, 1) noise of ``x``'s shape to use instead of drawing it
            (e.g. this rank's slice of a world-sized draw, ``paradigm.this_rank``).

    Returns:
        (B, ...) tensor of -1 and 1, ``x``'s dtype and device.
    """
    p = ((x.detach() + 1) / 2).clamp(0, 1)  # probability of a white pixel
    if mode == "threshold":
        white = p > 0.5
    elif mode == "dynamic":
        if uniform is None:
            device = generator.device if generator is not None else x.device
            uniform = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float32)
        white = uniform.to(x.device) < p
    elif mode == "static":
        white = static_uniform(x) < p
    else:
        raise ConfigError(f"binarization mode {mode!r} is not one of {list(MODES)}")
    return torch.where(white, 1.0, -1.0).to(x.dtype)


def static_uniform(x: Tensor) -> Tensor:
    """The fixed U(0, 1) noise of each image of ``x`` (B, ...): a function of its uint8 pixels only.

    Returns:
        (B, ...) float32 in [0, 1) on ``x``'s device; equal images give equal noise.
    """
    k = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.int64)  # (B, ...) uint8 values
    flat = k.flatten(1)  # (B, N)
    j = torch.arange(flat.shape[1], device=x.device, dtype=torch.int64)  # (N,) pixel index
    content = _hash32((j * 256 + flat) & _MASK32).sum(dim=1) & _MASK32  # (B,) content hash
    key = _hash32(content)[:, None]  # (B, 1)
    bits = _hash32((key + _mul32(j + 1, _GOLDEN)) & _MASK32)  # (B, N) in [0, 2^32)
    u = (bits >> 8).to(torch.float32) / float(1 << 24)  # 24 bits: exact in float32
    return u.view(x.shape)


def _mul32(a: Tensor, c: int) -> Tensor:
    """(a * c) mod 2^32 for int64 ``a`` in [0, 2^32) and a 32-bit constant ``c``, without overflow:
    ``c`` is split into 16-bit halves, so each partial product stays below 2^48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(v: Tensor) -> Tensor:
    """lowbias32 (Wellons 2018) on int64 tensors holding 32-bit unsigned values."""
    v = v ^ (v >> 16)
    v = _mul32(v, 0x7FEB352D)
    v = v ^ (v >> 15)
    v = _mul32(v, 0x846CA68B)
    return v ^ (v >> 16)
