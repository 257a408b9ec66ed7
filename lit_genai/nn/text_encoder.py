"""The small text encoder of text-to-image models: the project's GPT with bidirectional attention.

A caption's token ids (B, L) and their mask (B, L) (True at a real token, False at padding) go
through ``GPT.hidden_states`` of a ``GPT`` with ``causal: false`` (every token sees the whole
caption, as BERT, CLIP's text tower without its causal mask, or T5's encoder); the result is a
``cross_attention.TextContext``: the token vectors (0 at padding), the mask, and the mean of the
real tokens' vectors as the pooled caption vector (0 for the empty caption). Trained jointly with
the image model (``frozen: false``), or frozen (no gradient, outside the optimiser, always in eval
mode): a pre-trained one is read from a text-to-image checkpoint by
``lit_genai.pretrained.PretrainedTextEncoder``, and a Hugging Face CLIP / T5 encoder from a local
folder by ``lit_genai.nn.hf_text_encoder.HFTextEncoder``.

The encoder takes ids, not strings: the module tokenizes (``lit_genai.text_condition``), with the
words of the data's captions or UTF-8 bytes (id 0 is padding in both), unless the encoder has a
``tokenize`` of its own (a Hugging Face tokenizer). ``vocab_size`` must cover the tokenizer's ids.

Shape legend: B captions, L = max_length tokens, D = n_embd (the context width).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import TextContext
from lit_genai.nn.transformer import GPT


class TextEncoder(nn.Module):
    """A bidirectional transformer over caption tokens -> ``TextContext`` (module docstring).

    Args:
        vocab_size: token ids the embedding holds (id 0 = padding): at least the words of the data's
            captions + 1, or 257 for UTF-8 bytes.
        max_length: the longest caption in tokens (L); longer ones are refused with one line.
        n_layer, n_head, n_embd, dropout, rope: the ``GPT``'s (``causal`` is always false).
        frozen: no gradient, not optimised, always in eval mode.
    """

    def __init__(
        self,
        vocab_size: int = 64,
        max_length: int = 24,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        rope: bool = False,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ConfigError(f"TextEncoder: vocab_size={vocab_size} must be at least 2 (id 0 is padding)")
        self.gpt = GPT(vocab_size, max_length, n_layer, n_head, n_embd, dropout, causal=False, rope=rope)
        self.vocab_size, self.max_length, self.width = vocab_size, max_length, n_embd
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        return super().train(mode and not self.frozen)  # a frozen encoder never leaves eval mode

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> TextContext:
        """ids (B, L) int64, mask (B, L) bool (None: ids != 0) -> TextContext."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"TextEncoder: ids must be (B, L) int64, got {ids.dtype} {tuple(ids.shape)}")
        mask = ids != 0 if mask is None else mask.bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            h = self.gpt.hidden_states(ids, mask) * mask[..., None]  # (B, L, D), 0 at padding
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, D): mean of the real tokens
        return TextContext(h, mask, pooled)
