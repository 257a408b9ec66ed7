"""A GPT-2-class decoder-only transformer for next-token prediction, with a key/value cache.

Papers: Radford et al. 2018/2019 ("Improving Language Understanding by Generative Pre-Training",
"Language Models are Unsupervised Multitask Learners", sec. 2.3) and Vaswani et al. 2017 ("Attention
Is All You Need", sec. 3.2); the layout and initialisation follow the GPT-2 reference as nanoGPT's
``model.py`` reproduces it:

- learned token and position embeddings, summed, then dropout;
- ``n_layer`` pre-LayerNorm blocks, x + attn(ln_1(x)) then x + mlp(ln_2(x)) (GPT-2 sec. 2.3 moves
  the LayerNorm to the input of each sub-block), a final LayerNorm, and an output layer whose weight
  is the token embedding (weight tying, Press & Wolf 2017);
- multi-head self-attention through ``F.scaled_dot_product_attention`` (dropout on the attention
  weights in training) and an MLP 4x wide with GELU (``activation="gelu_tanh"``: the tanh
  approximation of the GPT-2 checkpoints);
- LayerNorms and linear layers with or without biases (``bias``; GPT-2 has them, nanoGPT's default
  drops them);
- init: every linear and embedding weight ~ N(0, 0.02), biases 0, and the residual projections
  (``c_proj``) ~ N(0, 0.02 / sqrt(2 n_layer)), one factor 1/sqrt(N) per residual addition (GPT-2
  sec. 2.3).

``causal=False`` makes the attention bidirectional (for masked-token models); the cache is meant
for causal models.

``rope=True`` adds rotary position embeddings (Su et al. 2021, "RoFormer", eq. 34) to the queries
and keys of every layer, on top of the learned absolute ones, so attention scores also see relative
offsets. A bidirectional model needs them: with absolute positions alone nothing tells a masked
position where its neighbours are (causal masking does that for a causal model), and a masked
character model stays on the unigram plateau for thousands of steps (experiments/masked/text.yaml).

Class conditioning (``num_classes > 0``): a learned class embedding with ``num_classes + 1`` rows,
added to the token embedding at every position (rather than a prefix token, which would take a
position of the context); the last row, label ``num_classes``, is the null label of classifier-free
guidance (Ho & Salimans 2022).

Text conditioning (``text_encoder``; MaskGIT over VQ tokens with a caption, as Muse, Chang et al.
2023, sec. 2.2, does with cross-attention to a frozen T5): every block gets a cross-attention
sub-block after its self-attention, x + gate · proj(attn(ln(x), context)) (``cross_attention.
CrossAttention``, pre-LN, zero output projection, 0 for an empty caption), and the pooled caption
vector is added to every position like the class embedding (``cross_attention.PooledText``, zero at
init). ``forward(idx, cond, context=...)`` takes the text encoder's ``TextContext``; None or an
all-padding context gives the output of no text, bit for bit. The new layers are built after the
GPT-2 init (which would overwrite their zero projections) and only with a text encoder, so a GPT
without one keeps its parameters, names, init draws and outputs. The cross-attention reads no cache:
with a cache (a causal model), the context must have the cache's batch.

Key/value cache (incremental decoding): ``init_cache`` allocates per-layer key and value buffers of
``block_size`` positions, a static cache (fixed shapes, as litgpt's ``KVCache`` and transformers'
``StaticCache``); ``forward(idx_new, cond, cache=cache)`` runs only the new tokens, at positions
``cache.length ..``, writes their keys and values into the buffers at those positions
(``index_copy_``), attends over the cached and the new keys (causally within the new chunk) and
returns the logits of the new positions. ``forward(idx_new, cond, cache=cache, input_pos=pos)``
takes the positions as a tensor instead, (t,) shared or (B, t) per row, and attends over the whole
buffer masked to the keys at positions <= each query's: no Python number depends on the position,
so the step exports with ``torch.export`` (``lit_genai.export.decoding``), and a sequence that
restarts at position 0 needs no reset (later positions are masked until they are written again).
The cache never holds more than ``block_size`` positions: ``lit_genai.ar.sampling.generate`` falls
back to recomputing the last ``block_size`` tokens once the context is full.

Shape legend: B batch, T tokens (t new ones with a cache, L cached), V vocabulary, D = n_embd,
nh heads of hs = D / nh channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import CrossAttention, PooledText, TextContext, check_context
from lit_genai.nn.layers import check_labels


def rotary(z: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoFormer eq. 34) of queries or keys z (B, nh, t, hs) at integer
    ``positions`` (t,), or (B, t) one row per sequence: each pair of features (2i, 2i + 1) is
    rotated by the angle p * base^(-2i/hs). Dot products of rotated vectors then depend on positions
    only through their difference."""
    hs = z.shape[-1]
    inv_freq = base ** (-torch.arange(0, hs, 2, device=z.device, dtype=torch.float32) / hs)  # (hs/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (t, hs/2) or (B, t, hs/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, t, hs/2): the same angles for every head
    cos, sin = angles.cos().to(z.dtype), angles.sin().to(z.dtype)
    z1, z2 = z[..., 0::2], z[..., 1::2]  # (B, nh, t, hs/2) each
    return torch.stack([z1 * cos - z2 * sin, z1 * sin + z2 * cos], dim=-1).flatten(-2)  # (B, nh, t, hs)


Activation = Literal["gelu", "gelu_tanh"]


@dataclass
class KVCache:
    """Keys and values of the positions a causal ``GPT`` has seen, for incremental decoding.

    Attributes:
        keys: one (B, nh, block_size, hs) buffer per layer; positions ``[0, length)`` are filled.
        values: the same for the values.
        length: the number of cached positions; the next token goes to position ``length``.

    The buffers never change shape: a token at position p writes column p (module docstring).
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    length: int = 0  # kept by calls without ``input_pos``; a caller giving positions tracks them itself

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


class SelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, sec. 3.2.2), causal or bidirectional.

    Args:
        n_embd: model width D.
        n_head: number of heads; divides ``n_embd``.
        dropout: dropout on the attention weights and on the output, in training.
        bias: biases in the projections.
        causal: each position attends to itself and earlier ones only.
        rope: rotate queries and keys by their positions (``rotary``).
    """

    def __init__(
        self, n_embd: int, n_head: int, dropout: float, bias: bool, causal: bool, rope: bool = False
    ) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # queries, keys, values of all heads
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # output (residual) projection
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout, self.causal = n_head, n_embd, dropout, causal
        self.rope = rope

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        kv: Optional[tuple[Tensor, Tensor]] = None,
        end: Optional[int] = None,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        """x (B, t, D) at ``positions`` (t,) or (B, t) -> (B, t, D).

        With ``kv`` (the layer's cache buffers, (B, nh, block_size, hs) each) the new keys and values
        are written at ``positions`` and the queries attend over the cached keys. ``end``: the number
        of filled positions when the caller knows it as a Python int (the positions are then
        ``end - t .. end - 1``): only the keys before it are read; None: the whole buffer.
        ``mask``: additive (0 / -inf), (t, L) or (B, 1, t, L) over the L keys read (``_cache_mask``),
        made once for all layers; None: causal within a chunk that starts at position 0, else
        (one new token) every key read.
        """
        B, t, D = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (z.view(B, t, self.n_head, D // self.n_head).transpose(1, 2) for z in (q, k, v))
        # q, k, v: (B, nh, t, hs)
        if self.rope:  # cached keys were rotated when written
            q, k = rotary(q, positions), rotary(k, positions)
        if kv is not None:
            k_buf, v_buf = kv
            _write(k_buf, positions, k)
            _write(v_buf, positions, v)
            k = k_buf[:, :, :end].to(q.dtype)  # (B, nh, end or block_size, hs)
            v = v_buf[:, :, :end].to(q.dtype)
        # SDPA's is_causal aligns its mask top-left: right only when the keys are the chunk's own
        is_causal = self.causal and mask is None and end == t
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # SDPA takes a float mask of the queries' dtype (autocast)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, t, hs)
        y = y.transpose(1, 2).reshape(B, t, D)
        return self.resid_dropout(self.c_proj(y))


def _cache_mask(positions: Tensor, length: int, dtype: torch.dtype) -> Tensor:
    """The additive attention mask of queries at ``positions`` (t,) or (B, t) over the cache's first
    ``length`` keys: 0 where key j <= the query's position, -inf elsewhere; (t, L) or (B, 1, t, L)
    (one for every head). Float rather than bool: SDPA on CPU converts a bool mask at every call."""
    keys = torch.arange(length, device=positions.device)
    allowed = keys <= positions[..., None]  # (t, L) or (B, t, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill_(
        ~allowed, float("-inf")
    )
    return mask if mask.dim() == 2 else mask[:, None]


def _write(buffer: Tensor, positions: Tensor, new: Tensor) -> None:
    """Write ``new`` (B, nh, t, hs) into a cache buffer (B, nh, L, hs) at ``positions``: (t,) for
    every row (``index_copy_``) or (B, t) one row each (``scatter_``); in place, so an exported step
    records it as a buffer mutation."""
    new = new.to(buffer.dtype)
    if positions.dim() == 1:
        buffer.index_copy_(2, positions, new)
    else:
        buffer.scatter_(2, positions[:, None, :, None].expand_as(new), new)


class MLP(nn.Module):
    """Position-wise feed-forward layer, D -> 4D -> D with GELU (Hendrycks & Gimpel 2016).

    Args:
        n_embd: model width D.
        dropout: dropout on the output, in training.
        bias: biases in the linear layers.
        activation: ``"gelu"`` (exact) or ``"gelu_tanh"`` (the tanh approximation GPT-2 used).
    """

    def __init__(self, n_embd: int, dropout: float, bias: bool, activation: Activation = "gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 sec. 2.3): x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    ``cross``: a ``CrossAttention`` to the text context between the two (set by ``GPT`` for a text
    model; None: no such sub-block, and no parameters for it)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float,
        bias: bool,
        causal: bool,
        activation: Activation,
        rope: bool = False,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, dropout, bias, causal, rope)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, activation)
        self.cross: Optional[CrossAttention] = None

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        kv: Optional[tuple[Tensor, Tensor]] = None,
        end: Optional[int] = None,
        mask: Optional[Tensor] = None,
        context: Optional[TextContext] = None,
    ) -> Tensor:  # (B, t, D) -> (B, t, D); positions, kv, end, mask: as SelfAttention.forward
        x = x + self.attn(self.ln_1(x), positions, kv, end, mask)
        if context is not None and self.cross is not None:
            x = self.cross(x, context)  # residual inside; + 0 for an empty caption
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer: (B, T) token ids -> (B, T, V) next-token logits (module docstring).

    Args:
        vocab_size: number of token ids V.
        block_size: the longest context (number of position embeddings).
        n_layer: number of transformer blocks.
        n_head: attention heads per block; divides ``n_embd``.
        n_embd: model width D.
        dropout: dropout on the embeddings, attention weights and residual branches, in training.
        bias: biases in the linear layers and LayerNorms (GPT-2: True).
        causal: causal attention (next-token models); False: bidirectional (masked-token models).
        num_classes: class-conditional with this many classes (0: unconditional); label
            ``num_classes`` is the null label.
        activation: ``"gelu"`` or ``"gelu_tanh"`` (GPT-2 checkpoints).
        rope: add rotary position embeddings to the attention (module docstring); for
            bidirectional models above all.
        text_encoder: a text encoder (``nn.text_encoder.TextEncoder`` or one with its interface:
            ``width``, ``max_length``, ``vocab_size``, ``frozen``) whose context every block attends to
            and whose pooled vector is added at every position (module docstring); a submodule, so
            a jointly trained one is optimised with the GPT. None: no text, no new layers.
        checkpoint_activations: In training without a cache (``self.training``, gradients on),
            keep only each block's input and recompute the block in the backward pass
            (``torch.utils.checkpoint``, non-reentrant, dropout replayed from the saved RNG state):
            less memory for one more forward pass of the blocks. Same outputs and gradients; no
            parameters, so checkpoints are unchanged; sampling with a cache never recomputes.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
        causal: bool = True,
        num_classes: int = 0,
        activation: Activation = "gelu",
        rope: bool = False,
        text_encoder: Optional[nn.Module] = None,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_activations = checkpoint_activations
        for key, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer)):
            if value < 1:
                raise ConfigError(f"GPT: {key}={value} must be at least 1")
        if n_head < 1 or n_embd % n_head:
            raise ConfigError(f"GPT: n_head={n_head} must divide n_embd={n_embd}; change n_head or n_embd")
        if num_classes < 0:
            raise ConfigError(f"GPT: num_classes={num_classes} must be >= 0 (0: unconditional)")
        if activation not in ("gelu", "gelu_tanh"):
            raise ConfigError(f"GPT: activation={activation!r}; choose 'gelu' or 'gelu_tanh'")
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.n_layer, self.n_head, self.n_embd, self.causal = n_layer, n_head, n_embd, causal
        self.rope = rope
        if rope and (n_embd // n_head) % 2:
            raise ConfigError(f"GPT: rope needs an even head size, got n_embd / n_head = {n_embd // n_head}")
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList(
                    Block(n_embd, n_head, dropout, bias, causal, activation, rope) for _ in range(n_layer)
                ),
                ln_f=nn.LayerNorm(n_embd, eps=1e-5, bias=bias),
            )
        )
        self.class_emb = nn.Embedding(num_classes + 1, n_embd) if num_classes > 0 else None
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one tensor
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections (GPT-2 sec. 2.3)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        # After the GPT-2 init (module docstring): it would overwrite the zero projections, and a GPT
        # without text must draw the same numbers as before.
        self.text_encoder = text_encoder
        self.text_pool: Optional[PooledText] = None
        if text_encoder is not None:
            context_dim = int(text_encoder.width)
            self.text_pool = PooledText(context_dim, n_embd)
            for block in self.transformer.h:
                block.cross = CrossAttention(n_embd, context_dim, n_head)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (the tied output weight counted once); ``non_embedding``: without the
        position embeddings (nanoGPT's count; the token embedding stays, as it is the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        """(B, T) token ids -> (B, T, D) the final LayerNorm's output, every position attending to the
        real tokens only (``key_mask`` (B, T) bool, True at a real token; None: every token). What a
        bidirectional text encoder gives (``nn.text_encoder.TextEncoder``); no class conditioning."""
        B, T = idx.shape
        if T > self.block_size:
            raise ConfigError(f"GPT: got {T} tokens, more than block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, D)
        mask = None
        if key_mask is not None:
            keys = key_mask | ~key_mask.any(dim=1, keepdim=True)  # an empty row reads every key
            mask = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device).masked_fill(
                ~keys[:, None, None, :], float("-inf")
            )  # (B, 1, 1, T) additive
            if self.causal:
                mask = mask + torch.full((T, T), float("-inf"), device=x.device).triu(1).to(x.dtype)
        for block in self.transformer.h:
            x = self._run(block, x, pos, None, T, mask)
        return self.transformer.ln_f(x)  # (B, T, D)

    def _run(self, block: Block, x: Tensor, *args) -> Tensor:
        """``block(x, *args)``, recomputed in the backward pass under ``checkpoint_activations`` in
        training (never with a cache: its writes must happen once)."""
        if self.checkpoint_activations and self.training and torch.is_grad_enabled() and args[1] is None:
            return checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def init_cache(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``block_size`` tokens.

        Args:
            batch_size: number of sequences B.
            device: where the buffers live (default: the parameters' device).
            dtype: their dtype (default: the parameters' dtype).
        """
        weight = self.transformer.wte.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        shape = (batch_size, self.n_head, self.block_size, self.n_embd // self.n_head)
        return KVCache(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layer)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layer)],
        )

    def forward(
        self,
        idx: Tensor,
        cond: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        input_pos: Optional[Tensor] = None,
        context: Optional[TextContext] = None,
    ) -> Tensor:
        """Next-token logits.

        Args:
            idx: (B, T) int64 token ids; with ``cache``, the new tokens only.
            cond: (B,) int64 labels in [0, num_classes] (num_classes: the null label) when
                ``num_classes > 0``, else None.
            cache: a ``KVCache`` from ``init_cache``: the tokens take positions ``cache.length ..``,
                their keys and values are written into it and ``cache.length`` grows by T.
            input_pos: with ``cache``, the positions of the tokens as a tensor instead, (T,) for every
                row or (B, T) one row each, each < ``block_size``: attention reads the whole cache,
                masked to the positions <= each token's, and ``cache.length`` is left alone (the
                exportable decode step, module docstring). Causal nets only.
            context: the text encoder's ``TextContext`` of B captions (a net with a ``text_encoder``
                only); None or empty captions: no text.

        Returns:
            (B, T, V) logits of the next token after each position of ``idx``.
        """
        if idx.dim() != 2:
            raise ValueError(f"GPT: idx must be (B, T) int64 token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"GPT: the cache holds {cache.batch_size} sequences but idx has {B}")
        end: Optional[int] = None  # positions filled after this call, when known as a Python int
        if input_pos is not None:
            if cache is None or not self.causal:
                raise ValueError("GPT: input_pos needs a cache and a causal net (causal=True)")
            if tuple(input_pos.shape) not in ((T,), (B, T)):
                raise ValueError(f"GPT: input_pos must be ({T},) or ({B}, {T}), got {tuple(input_pos.shape)}")
            pos = input_pos.long()  # (T,) or (B, T)
        else:
            start = 0 if cache is None else cache.length
            end = start + T
            if end > self.block_size:
                where = f"{T} tokens" if cache is None else f"{T} new tokens after {start} cached ones"
                raise ConfigError(
                    f"GPT: got {where}, more than block_size={self.block_size}: shorten the sequence "
                    f"(crop to the last {self.block_size} tokens) or raise model.net.init_args.block_size"
                )
            if cache is not None and not self.causal and start > 0:
                raise ValueError(
                    "GPT: causal=False attends to later positions, so it cannot decode with a cache"
                )
            pos = torch.arange(start, end, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, D)
        check_labels("GPT", self.num_classes, cond, B, allow_null=True, arg="cond")
        if self.class_emb is not None:
            x = x + self.class_emb(cond)[:, None, :]  # the class embedding at every position
        check_context("GPT", self.text_encoder, context, B)
        if context is not None:
            x = x + self.text_pool(context.pooled)[:, None, :]  # (B, T, D); + 0 for an empty caption
        x = self.transformer.drop(x)
        mask = None  # None: causal over a chunk from position 0, or every key read for one new token
        if input_pos is not None:  # the whole buffer: the positions not yet written are masked
            mask = _cache_mask(pos, self.block_size, x.dtype)
        elif cache is not None and start > 0 and T > 1:  # a chunk after cached keys
            mask = _cache_mask(pos, end, x.dtype)
        for i, block in enumerate(self.transformer.h):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x = self._run(block, x, pos, kv, end, mask, context)
        if cache is not None and input_pos is None:
            cache.length = end
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
