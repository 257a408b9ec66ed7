"""Image inpainting with MaskGIT over VQ tokens: the sources, their tokens and the start sequence.

A source reaches ``MaskedTokens.sample`` as the ``image`` condition (images in [-1, 1], or their token
ids) with a ``mask`` (True where to fill), or as the ``init_image`` / ``mask`` sampling settings
(files, sample i taking file i % len). Images become tokens through the VQ-VAE that made the data's
tokens (the ``tokenizer`` setting: a checkpoint, read once, never a submodule). A token is known only
if all of its pixels are (``sampling.token_fill_mask``); the start sequence holds the source's
known tokens and [MASK] elsewhere, which MaskGIT's decoding keeps as it keeps a prompt's tokens.

Shape legend: n samples, C/H/W a source image, h/w the token grid, N = h·w tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.masked.sampling import inpainting_tokens, token_fill_mask
from lit_genai.media.sources import cycle, read_images, read_mask
from lit_genai.pretrained import load_pretrained


def load_tokenizer(path: Optional[str]) -> Any:
    """The frozen VQ-VAE of the ``tokenizer`` setting; one ``ConfigError`` line without one."""
    if path is None:
        raise ConfigError(
            "image inpainting needs the VQ-VAE that made the tokens: set model.sampling.tokenizer to "
            "the data's tokenizer checkpoint (data.init_args.tokenizer)"
        )
    from lit_genai.vae.vqvae import VQVAE  # the first stage, read as data/tokens.py reads it

    return load_pretrained(path, VQVAE, "model.sampling.tokenizer")


def setting_sources(
    init_image: Optional[str], mask: Optional[str], indices: Sequence[int], tokenizer: Callable[[], Any]
) -> dict[str, Tensor]:
    """The ``image`` (images (len(indices), C, H, W) at the tokenizer's size) and ``mask`` conditions
    of sample indices from the settings' files, file i % len for index i; {} without ``init_image``."""
    named: dict[str, Tensor] = {}
    if init_image is not None:
        shape = tokenizer().sample_shape  # (C, H, W) of the tokenizer's images
        named["image"] = cycle(read_images(init_image, shape), indices)
    if mask is not None:
        if init_image is None:
            raise ConfigError("model.sampling.mask needs a source image: set model.sampling.init_image")
        named["mask"] = cycle(read_mask(mask, named["image"].shape[-2:]), indices)
    return named


def inpainting_start(
    image: Optional[Tensor],
    mask: Optional[Tensor],
    n: int,
    block_size: int,
    mask_id: int,
    tokenizer: Callable[[], Any],
    device: torch.device,
    owner: str = "MaskedTokens.sample()",
) -> Optional[Tensor]:
    """Sources (images (n, C, H, W), or token ids (n, N) or (n, h, w)) and a mask (n, 1, H, W) ->
    the start (n, N): the source's tokens with [MASK] at every token that has a pixel to fill (all of
    them kept without a mask); None without a source."""
    if image is None:
        if mask is not None:
            raise ConfigError("a mask needs a source image: give cond['image'] or model.sampling.init_image")
        return None
    image = torch.as_tensor(image)
    if image.is_floating_point():  # images: their tokens through the tokenizer
        with torch.no_grad():
            image = tokenizer().to(device).encode(image.to(device))  # (n, h, w)
    if image.dim() == 2:  # (n, N) raster order: a square grid
        side = int(round(image.shape[1] ** 0.5))
        image = image.reshape(image.shape[0], side, image.shape[1] // side)
    if image.shape[0] != n or image[0].numel() != block_size:
        raise ConfigError(
            f"{owner}: {image.shape[0]} sources of {image[0].numel()} tokens for {n} samples of "
            f"block_size={block_size}"
        )
    source = image.reshape(n, -1).to(device)  # (n, N)
    if mask is None:
        return source
    mask = torch.as_tensor(mask).bool().expand(n, 1, *torch.as_tensor(mask).shape[-2:])
    fill = token_fill_mask(mask, tuple(image.shape[-2:]))  # (n, N)
    return inpainting_tokens(source, fill, mask_id)
