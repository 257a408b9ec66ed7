"""The ``text`` condition: captions -> token ids -> the text encoder's context (docs/architecture.md,
"Conditions").

What the text-conditioned modules (``Diffusion``, ``EDM``, ``FlowMatching``, ``MaskedTokens``) share:

- tokenization (``CaptionTokenizer``): the words of the data's captions (``text_vocabulary``, linked
  from the data; a word outside it is one ``ConfigError`` line naming the known words), or UTF-8 bytes
  when the data has no closed vocabulary (any text is accepted then); id 0 is padding in both. An
  encoder with a ``tokenize`` of its own (a Hugging Face one, a pre-trained one) is used instead. The
  vocabulary is a hyperparameter of the module, so a checkpoint tokenizes prompts without the data.
- caption dropout for classifier-free guidance (``drop``): a row's caption becomes the empty caption
  (all padding) with the module's ``p_uncond`` for ``text``, one world-sized draw
  (``conditions.drop_conditions``);
- encoding (``encode``): ids -> ``TextContext`` through the network's text encoder; the empty caption
  is the null condition, whose context changes nothing (``nn.cross_attention``).

Shape legend: B captions, L tokens (the encoder's ``max_length``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lit_genai.conditions import drop_conditions
from lit_genai.data.tokenizers import caption_words
from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import TextContext

Text = Union[Sequence[str], Tensor]
"""The ``text`` condition's value: n captions, or (n, L) token ids of the module's tokenizer."""

BYTE_VOCAB_SIZE = 257  # 256 bytes + padding


class CaptionTokenizer:
    """Captions -> ((B, L) int64 ids, (B, L) bool mask), words or UTF-8 bytes, id 0 = padding.

    Args:
        vocabulary: The words (``text_vocabulary`` of the data); word i has id i + 1. None: bytes
            (byte b has id b + 1).
        max_length: L; a longer caption is one ``ConfigError`` line.
    """

    def __init__(self, vocabulary: Optional[Sequence[str]], max_length: int) -> None:
        self.vocabulary = None if vocabulary is None else [str(w) for w in vocabulary]
        self.index = None if self.vocabulary is None else {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.max_length = int(max_length)
        self.vocab_size = BYTE_VOCAB_SIZE if self.vocabulary is None else len(self.vocabulary) + 1

    def ids(self, caption: str) -> list[int]:
        """One caption's ids (no padding)."""
        if self.index is None:
            return [b + 1 for b in caption.encode("utf-8")]
        words = caption_words(caption)
        unknown = sorted({w for w in words if w not in self.index})
        if unknown:
            raise ConfigError(
                f"the caption {caption!r} has word(s) the text encoder does not know: {', '.join(unknown)}; "
                f"it knows {len(self.index)} words: {', '.join(self.vocabulary)}"
            )
        return [self.index[w] for w in words]

    def __call__(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)  # (B, L)
        for row, caption in enumerate(captions):
            tokens = self.ids(str(caption))
            if len(tokens) > self.max_length:
                unit = "bytes" if self.index is None else "words"
                raise ConfigError(
                    f"the caption {caption!r} has {len(tokens)} {unit}, more than the text encoder's "
                    f"max_length={self.max_length}: shorten it or raise the encoder's max_length"
                )
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, ids != 0


class TextCondition:
    """A module's text condition over its network's ``text_encoder`` (module docstring).

    A plain object, not an ``nn.Module``: the encoder stays a submodule of the network, so the
    optimiser, the EMA and the checkpoint see it there, once.

    Args:
        encoder: The network's text encoder.
        vocabulary: The data's caption words (None: bytes), unless the encoder tokenizes itself.
        owner: The config key of the network, for errors.
    """

    def __init__(
        self, encoder: nn.Module, vocabulary: Optional[Sequence[str]], owner: str = "model.net"
    ) -> None:
        self.encoder = encoder
        own = getattr(encoder, "tokenize", None)
        if callable(own):
            self.tokenizer: Any = own
        else:
            self.tokenizer = CaptionTokenizer(vocabulary, int(encoder.max_length))
            needed, has = self.tokenizer.vocab_size, int(encoder.vocab_size)
            if has < needed:
                what = (
                    f"{needed - 1} caption words + padding"
                    if vocabulary is not None
                    else "256 bytes + padding"
                )
                raise ConfigError(
                    f"{owner}.init_args.text_encoder.init_args.vocab_size={has} but the captions need "
                    f"{needed} ids ({what}): set it to {needed}"
                )

    @property
    def frozen(self) -> bool:
        return bool(getattr(self.encoder, "frozen", False))

    def tokenize(self, text: Text, device: torch.device) -> tuple[Tensor, Tensor]:
        """n captions (or (n, L) ids of this tokenizer) -> ids (n, L), mask (n, L) on ``device``."""
        if isinstance(text, Tensor):
            if text.dim() != 2 or text.dtype != torch.long:
                raise ConfigError(
                    f"a text condition given as ids must be (n, L) int64, got {tuple(text.shape)}"
                )
            ids = text
            return ids.to(device), (ids != 0).to(device)
        if isinstance(text, str):
            raise ConfigError(
                "the text condition is one caption per sample: give a list of strings, not a string"
            )
        ids, mask = self.tokenizer([str(t) for t in text])
        return ids.to(device), mask.to(device)

    def drop(
        self, ids: Tensor, mask: Tensor, probabilities: Mapping[str, float], trainer: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Caption dropout: each row becomes the empty caption (ids 0, mask all False) with probability
        ``probabilities["text"]``; the kept rows keep their tokenizer's mask (id 0 may be a real token
        of a Hugging Face tokenizer)."""
        p = probabilities.get("text", 0.0)
        if not p:
            return ids, mask
        rows = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)  # (B,)
        keep = drop_conditions({"text": rows}, {"text": p}, {"text": rows.new_zeros(())}, trainer)["text"]
        return ids * keep[:, None], mask & keep[:, None]

    def encode(self, ids: Tensor, mask: Tensor) -> TextContext:
        """ids, mask (B, L) -> the encoder's context (no gradient through a frozen encoder)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encoder(ids, mask)

    def null(self, n: int, device: torch.device) -> TextContext:
        """The context of n empty captions (classifier-free guidance's null condition)."""
        ids, mask = self.tokenize([""] * n, device)
        return self.encode(ids, mask)

    def captions(self, text: Text) -> Sequence[str]:
        """The captions as strings where they were given as strings (for files and logs)."""
        return [] if isinstance(text, Tensor) else list(text)


def prompts_for(prompt: Union[str, Sequence[str], None], indices: Sequence[int]) -> Optional[list[str]]:
    """The prompt of each sample index: ``prompt`` (one string, or a list cycled: sample i gets
    ``prompt[i % len]``); None without a prompt."""
    if prompt is None or (not isinstance(prompt, str) and len(prompt) == 0):
        return None
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    return [prompts[int(i) % len(prompts)] for i in indices]


def text_encoder_of(net: nn.Module) -> Optional[nn.Module]:
    """The network's text encoder (its ``text_encoder`` attribute), or None."""
    return getattr(net, "text_encoder", None)
