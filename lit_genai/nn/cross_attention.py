"""Cross-attention to a text context, the way text-to-image networks read a caption.

Papers: Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3.3:
the UNet's intermediate features attend to the token embeddings of a text encoder), Nichol et al.
2022 (GLIDE: the pooled text embedding is also added to the timestep embedding), Saharia et al. 2022
(Imagen: a frozen text encoder, a padding mask over its tokens).

A text encoder gives a ``TextContext``: one vector per token, a mask of the real tokens (False at
padding) and a pooled vector per caption. Every network that reads text does it through
``CrossAttention`` (queries from the image or token features, keys and values from the context,
padding masked) and adds ``pooled`` through a linear map without bias. A caption with no token at
all (the empty caption, classifier-free guidance's null condition) therefore changes nothing: its
cross-attention output is exactly zero (its rows are multiplied by 0 after the output projection) and
its pooled vector is zero, so the network's output equals its output without a context, bit for bit.

A convolutional network's features carry their place in the picture only weakly (through the
borders' zero padding), so a caption's "top left" has nothing to attend from: ``SpatialCrossAttention``
adds a fixed 2-D sine-cosine embedding of each position (MAE / DiT's) to its queries, as a
transformer's tokens carry theirs. (On CaptionedShapes a small text-conditioned UNet, with or without
it, still placed shapes at chance after 3,750 to 5,000 CPU steps while the MaskGIT transformer placed
them right: README, "Text to image".)

Shape legend: B batch, N query positions, D query width, L context tokens, Dc context width,
nh heads.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError


class TextContext(NamedTuple):
    """What a text encoder gives for B captions.

    Attributes:
        tokens: (B, L, Dc) one vector per token (0 at padding).
        mask: (B, L) bool, True at a real token; a row of False is the empty caption.
        pooled: (B, Dc) one vector per caption (0 for the empty caption).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def repeat(self, k: int) -> TextContext:
        """The context of a batch repeated ``k`` times along the batch ((k·B, ...)), for guidance's two
        branches in one pass."""
        return TextContext(*(torch.cat([z] * k) for z in self))

    @staticmethod
    def cat(contexts: list[TextContext]) -> TextContext:
        """Contexts of several batches (the same L) stacked along the batch."""
        return TextContext(*(torch.cat(parts) for parts in zip(*contexts, strict=True)))


def attention_mask(mask: Tensor) -> tuple[Tensor, Tensor]:
    """A key-padding mask (B, L) bool -> (SDPA's boolean mask (B, 1, 1, L), (B,) bool: has a token).

    A row without any real token would make softmax over no keys (NaN); it attends to every key
    instead, and the caller zeroes its output with the second value.
    """
    valid = mask.any(dim=1)  # (B,)
    safe = mask | ~valid[:, None]  # (B, L): an empty row reads all keys (then multiplied by 0)
    return safe[:, None, None, :], valid


class CrossAttention(nn.Module):
    """Multi-head attention of (B, N, D) queries over a (B, L, Dc) context, with a residual.

    ``x + gate · proj(attention(norm(x), context))``, where gate is 0 for a row whose caption has no
    token, so the empty caption is the identity. The output projection starts at zero (as the UNet's
    attention blocks and DiT's adaLN-Zero do), so a network given cross-attention starts as the
    network without it.

    Args:
        dim: query width D.
        context_dim: context width Dc (the text encoder's ``width``).
        num_heads: attention heads; divides ``dim``.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(
                f"CrossAttention: num_heads={num_heads} must divide the width {dim}; change the heads"
            )
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: TextContext, query_pos: Optional[Tensor] = None) -> Tensor:
        """x (B, N, D), context, optional (N, D) embedding of the queries' positions -> (B, N, D)."""
        B, N, D = x.shape
        nh, hs = self.num_heads, D // self.num_heads
        h = self.norm(x) if query_pos is None else self.norm(x) + query_pos.to(x.dtype)
        q = self.q(h).view(B, N, nh, hs).transpose(1, 2)  # (B, nh, N, hs)
        k, v = self.kv(context.tokens.to(x.dtype)).split(D, dim=2)  # (B, L, D) each
        k, v = (z.reshape(B, -1, nh, hs).transpose(1, 2) for z in (k, v))  # (B, nh, L, hs)
        mask, valid = attention_mask(context.mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hs)
        y = self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)
        return x + y * valid[:, None, None].to(y.dtype)


def grid_positions(dim: int, height: int, width: int, device: torch.device) -> Tensor:
    """(H·W, dim) fixed 2-D sine-cosine embedding of a feature map's positions, row-major: position
    (i, j) gets [sin / cos of j · omega, sin / cos of i · omega], omega_k = 10000^(-k / (dim / 4)),
    the MAE / DiT embedding for a rectangle; zero-padded to ``dim`` when 4 does not divide it."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / max(quarter, 1))
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )  # (H, W) each
    parts = []
    for coordinate in (cols.reshape(-1), rows.reshape(-1)):
        angles = coordinate.double()[:, None] * omega[None]  # (HW, dim/4)
        parts += [angles.sin(), angles.cos()]
    embedding = torch.cat(parts, dim=1).float()  # (HW, 4 * quarter)
    return F.pad(embedding, (0, dim - embedding.shape[1]))  # (HW, dim)


class SpatialCrossAttention(nn.Module):
    """``CrossAttention`` for feature maps: (B, C, H, W) -> the H·W positions as queries, each with its
    2-D position embedding (``grid_positions``, module docstring) -> (B, C, H, W)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = CrossAttention(channels, context_dim, num_heads)

    def forward(self, x: Tensor, context: TextContext) -> Tensor:
        B, C, H, W = x.shape
        positions = grid_positions(C, H, W, x.device)  # (HW, C)
        h = self.attn(x.flatten(2).transpose(1, 2), context, positions)  # (B, HW, C)
        return h.transpose(1, 2).reshape(B, C, H, W)


class PooledText(nn.Module):
    """The pooled caption vector (B, Dc) as an addition to a (B, D) embedding: a linear map without
    bias, zero at initialisation, so the empty caption (pooled 0) adds exactly 0."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(context_dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.proj(pooled)  # (B, D)


def check_context(owner: str, text_encoder: object, context: TextContext | None, batch: int) -> None:
    """One ``ValueError`` when a context is given to a network without a text encoder, or has another
    batch size than the input (the text analogue of ``layers.check_labels``)."""
    if context is None:
        return
    if text_encoder is None:
        raise ValueError(f"{owner}: got a text context but the network has no text_encoder (set one)")
    if context.tokens.shape[0] != batch or context.mask.shape != context.tokens.shape[:2]:
        raise ValueError(
            f"{owner}: the text context has tokens {tuple(context.tokens.shape)} and mask "
            f"{tuple(context.mask.shape)} for a batch of {batch}"
        )
