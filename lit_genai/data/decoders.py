"""Media decoders: what turns a model's samples into their medium, kept in the checkpoint.

A data module's ``decode(samples)`` needs a little of the data: a text's vocabulary, an audio set's
sample rate, the pixel levels of an image set, the tokenizer of image tokens. To decode samples of a
trained model with the data absent (``lit_genai.api.load``, the service, exports), every data module
describes its decoding as a small frozen dataclass of plain values (its ``decoder`` property), uses
it for its own ``decode``, and saves its config in its ``state_dict`` (``{"decoder": ...}``), which
Lightning writes into every checkpoint (docs/architecture.md, "Data and model"):

=====================  ========================================  ==================================
decoder                decodes                                   from
=====================  ========================================  ==================================
``ImageDecoder``       (B, C, H, W) in [-1, 1] -> uint8          image data modules
``TextDecoder``        (B, T) token ids -> B strings             ``data.text.CharText``
``AudioDecoder``       (B, T) mu-law ids -> ``Waveforms``        ``data.audio`` modules
``PixelDecoder``       (B, C·H·W) pixel tokens -> uint8 images   ``data.pixels.ImagePixels``
``VQTokenDecoder``     (B, h·w) VQ-VAE ids -> uint8 images       ``data.tokens.ImageTokens``
=====================  ========================================  ==================================

``decoder_config`` writes one as ``{"class_path", "init_args"}``; ``decoder_from_config`` rebuilds it
(only the classes of this file and ``data.tokens``: a checkpoint cannot name code to run).

Shape legend: B batch, C channels, H/W spatial, T time or tokens, N tokens per image.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lit_genai.data.audio.dsp import NUM_CLASSES, mu_law_decode
from lit_genai.data.tokenizers import char_index, decode_ids, encode_text, gpt2_encoding
from lit_genai.errors import ConfigError
from lit_genai.media import Waveforms, to_uint8

Media = Union[Tensor, list[str], Waveforms]


@dataclasses.dataclass(frozen=True)
class ImageDecoder:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, C, H, W), same device."""

    modality = "image"

    def __call__(self, x: Tensor) -> Tensor:
        return to_uint8(x.detach())


@dataclasses.dataclass(frozen=True)
class TextDecoder:
    """Token ids (B, T) -> B strings (``data.tokenizers``); ``encode`` the other way.

    Args:
        tokenizer: ``char``, ``byte`` or ``gpt2``.
        vocabulary: The characters of the ids (``char``), else None.
        vocab_size: The number of ids.
        folder: The local GPT-2 tokenizer folder (``vocab.json`` and ``merges.txt``) of ``gpt2``,
            else None (``gpt2``: tiktoken's own files).
    """

    tokenizer: str
    vocabulary: Optional[tuple[str, ...]]
    vocab_size: int
    folder: Optional[str] = dataclasses.field(default=None, metadata={"omit_none": True})
    modality = "text"

    def __post_init__(self) -> None:
        if self.vocabulary is not None:  # a list from a checkpoint: frozen and hashable as a tuple
            object.__setattr__(self, "vocabulary", tuple(self.vocabulary))

    def _encoding(self) -> Any:
        """The gpt2 ``tiktoken`` encoding (cached by ``gpt2_encoding``), or None."""
        return gpt2_encoding(self.folder) if self.tokenizer == "gpt2" else None

    def __call__(self, tokens: Tensor) -> list[str]:
        vocabulary = None if self.vocabulary is None else list(self.vocabulary)
        return decode_ids(tokens, self._encoding(), vocabulary, self.vocab_size)

    def encode(self, text: str) -> Tensor:
        """A string -> its token ids (T,) int64 through the same tokenizer (``encode_text``)."""
        index = char_index(None if self.vocabulary is None else list(self.vocabulary))
        return encode_text(text, self._encoding(), index, self.vocab_size)  # (T,)


@dataclasses.dataclass(frozen=True)
class AudioDecoder:
    """8-bit mu-law ids (B, T) (or one row (T,)) -> ``Waveforms`` (B, T) in [-1, 1] at ``sample_rate``."""

    sample_rate: int
    modality = "audio"

    def __call__(self, ids: Tensor) -> Waveforms:
        ids = torch.as_tensor(ids).detach().long().cpu()
        ids = ids[None] if ids.dim() == 1 else ids  # (B, T)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= NUM_CLASSES):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise ConfigError(
                f"token id {bad} is outside the {NUM_CLASSES} mu-law classes of the audio data: the model "
                "was trained on other tokens (model vocab_size and data vocab_size differ)"
            )
        return Waveforms(mu_law_decode(ids), int(self.sample_rate))


@dataclasses.dataclass(frozen=True)
class PixelDecoder:
    """Pixel tokens (B, C·H·W), channels innermost -> uint8 images (B, C, H, W): round(t 255 / (L - 1)).

    Args:
        image_shape: (C, H, W) of one image.
        levels: L, the number of token values (256, or 2 for binarised images).
    """

    image_shape: tuple[int, int, int]
    levels: int
    modality = "image"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))

    def __call__(self, tokens: Tensor) -> Tensor:
        C, H, W = self.image_shape
        t = tokens.long().clamp(0, self.levels - 1).reshape(tokens.shape[0], H, W, C).permute(0, 3, 1, 2)
        return (t.double() * (255.0 / (self.levels - 1))).round().to(torch.uint8)  # (B, C, H, W)


def decoder_config(decoder: Any) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a decoder (plain values: lists for tuples); a
    field marked ``omit_none`` is left out while None (configs as before it existed)."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    cls = type(decoder)
    fields = [f for f in dataclasses.fields(decoder) if f.metadata.get("config", True)]
    fields = [f for f in fields if not (f.metadata.get("omit_none") and getattr(decoder, f.name) is None)]
    init_args = {f.name: plain(getattr(decoder, f.name)) for f in fields}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


# Where decoder classes may come from: this file, and data.tokens (whose decoder loads a VQ-VAE).
_DECODER_MODULES = ("lit_genai.data.decoders", "lit_genai.data.tokens")


def decoder_from_config(config: Mapping[str, Any], where: str = "checkpoint") -> Any:
    """Rebuild a decoder from ``decoder_config``'s dict; one ``ConfigError`` line for anything else."""
    class_path = str(config.get("class_path", "")) if isinstance(config, Mapping) else ""
    module_name, _, name = class_path.rpartition(".")
    if module_name not in _DECODER_MODULES:
        raise ConfigError(f"{where}: its media decoder {class_path!r} is not one of lit_genai's decoders")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and callable(cls)):
        raise ConfigError(f"{where}: its media decoder {class_path!r} is not one of lit_genai's decoders")
    try:
        return cls(**dict(config.get("init_args") or {}))
    except TypeError as error:
        raise ConfigError(f"{where}: cannot rebuild its media decoder {name} ({error})") from None


def decoder_state(decoder: Any, **more: Any) -> dict[str, Any]:
    """A data module's ``state_dict``: its decoder's config (and ``more``), for checkpoints."""
    return {"decoder": decoder_config(decoder), **more}


__all__: Sequence[str] = (
    "AudioDecoder",
    "ImageDecoder",
    "PixelDecoder",
    "TextDecoder",
    "decoder_config",
    "decoder_from_config",
    "decoder_state",
)
