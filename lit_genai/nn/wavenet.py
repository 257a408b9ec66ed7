"""WaveNet: an autoregressive model of raw audio samples with dilated causal convolutions.

Papers: van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio" (sec. 2.1 dilated
causal convolutions, sec. 2.2 the softmax over mu-law levels, sec. 2.3 gated activation units,
eq. 2, sec. 2.4 residual and skip connections, Fig. 4, sec. 2.5 global and local conditioning,
eqs. 3-4), and Paine et al. 2016, "Fast Wavenet Generation Algorithm" (the per-layer queues of
incremental generation).

Layout (Fig. 4): the input ids are looked up in a learned table (``nn.Embedding(levels,
residual_channels)``, the same as a one-hot input through a 1x1 convolution), then
``stacks * layers_per_stack`` residual layers with dilations 1, 2, ..., 2^(layers_per_stack - 1) in
every stack. Layer l:

- ``pre = W_l * x`` (a causal convolution of ``kernel_size`` taps, dilation d_l, left zero padding of
  (k - 1) d_l: the output at t sees the inputs t - (k - 1) d_l, ..., t - d_l, t), plus the class's
  row of the layer (global conditioning, eq. 3) and a 1x1 convolution of the local features
  (local conditioning, eq. 4); ``gate_channels`` pre-activations;
- ``z = tanh(pre[:G/2]) * sigmoid(pre[G/2:])`` (eq. 2), G/2 = gate_channels / 2 channels;
- one 1x1 convolution of z gives the residual (``residual_channels``; the next layer's input is
  x + residual) and the skip output (``skip_channels``); the last layer has only the skip part (its
  residual would be unused, which distributed training does not allow).

The head sums the skip outputs: ReLU -> 1x1 -> ReLU -> 1x1 to ``levels`` logits. The output at t
sees the inputs t - receptive_field + 1 .. t, receptive_field = 1 + (k - 1) * sum of the dilations,
and predicts sample t + 1 (``target_offset = 1``, as ``nn.transformer.GPT``).

Conditioning:

- global (``num_classes > 0``): a learned table of ``num_classes + 1`` rows (the last, label
  ``num_classes``, the null label of classifier-free guidance, as in ``nn.transformer.GPT``), one
  ``gate_channels`` bias per layer (stored as one table of n_layers * gate_channels columns), added
  to the gate pre-activations at every position;
- local (``local_channels > 0``, e.g. log-mel frames of ``hop_length`` samples each): the features
  at input position t are those of frame t // hop_length (the frame of the input sample t; no
  learned upsampling, repetition only, so a frame's 1x1 projection is computed once and repeated),
  projected by a 1x1 convolution (no bias) into every layer's gate pre-activations.
  ``local (B, local_channels, frames)`` must cover the inputs: frames >= ceil((offset + T) / hop).

Fast generation (Paine et al. 2016): layer l only ever needs its inputs at t - (k - 1) d_l .. t, so
a ``WaveNetCache`` keeps, per layer, a queue of the last (k - 1) d_l inputs of the layer (zeros
before the first sample, as the padding of ``forward``). A queue is a buffer of (k - 1) d_l + M
columns in time order, M = ``spare`` free columns (``init_cache``): a step writes the new input at
the next column and reads the k taps as one strided view (every d_l-th column); once the spare
columns are used up, the last (k - 1) d_l inputs move to the front (every M steps: (k - 1) d_l / M
columns per step). ``forward(idx_new, cond, local, cache=cache)`` runs the t new samples only, at
positions ``cache.length ..``, reading the queues and writing the new inputs into them, so a new
sample costs O(layers) instead of a pass over the receptive field. The queues roll: the cache never
fills (``WaveNetCache.rolling``), and its logits equal ``forward``'s over the whole sequence (to
float round-off) at any length. With local conditioning the cache keeps the (projected) ``local`` of
its first call, the features of the whole sequence to generate, and the new sample at position
``length`` takes frame length // hop_length.

Ring buffers (the exportable step): ``init_rings`` gives per layer a fixed (B, R, (k - 1) d_l)
buffer holding the layer's last (k - 1) d_l inputs, time tau at column tau mod (k - 1) d_l, and
``step(idx, input_pos, rings, cond, local)`` runs one sample at a position given as a tensor: it
reads the k - 1 past taps at columns (t - j d_l) mod (k - 1) d_l (zeros for times before 0, so
position 0 starts a new sequence with no reset), then writes the new input over the oldest one. No
Python number depends on the position, so the step exports with ``torch.export``
(``lit_genai.export.decoding``), and it computes what the queues compute (the same taps into the same
matrix products).

``block_size`` is the context ``lit_genai.ar.sampling.generate`` crops to when it recomputes
(``use_cache=False``) and the longest training sequence ``ar.NextToken`` accepts; it must be at least
the receptive field (the default), so that the cropped recomputation gives the same logits.

Shape legend: B batch, T samples (t new ones with a cache), V = levels, R residual, G gate, S skip
channels, N = stacks * layers_per_stack layers, C local channels, F frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.layers import check_labels

_KEY = "model.net.init_args"


@dataclass
class WaveNetCache:
    """The queues of fast WaveNet generation (Paine et al. 2016; module docstring).

    Attributes:
        queues: one (B, R, (k - 1) d_l + spare) buffer per layer, in time order: column c holds the
            layer's input at time ``base + c - (k - 1) d_l`` (zeros before time 0), filled up to
            time ``length - 1``.
        length: the number of samples seen so far; the next one is at position ``length``.
        base: the time held by column (k - 1) d_l of every queue (the first spare column).
        local: the local conditioning of the whole sequence, projected for every layer,
            (B, N * G, F), set on the first call that gives ``local``; None without local conditioning.
        rolling: the queues roll, so the cache never fills (``lit_genai.ar.sampling.generate`` keeps
            stepping past ``block_size``).
        spare: free columns M of a queue after its (k - 1) d_l inputs.
    """

    queues: list[Tensor] = field(default_factory=list)
    length: int = 0
    base: int = 0
    local: Optional[Tensor] = None
    spare: int = 256
    rolling: ClassVar[bool] = True

    @property
    def batch_size(self) -> int:
        return self.queues[0].shape[0] if self.queues else 0


class WaveNet(nn.Module):
    """WaveNet over mu-law sample ids: (B, T) int64 -> (B, T, levels) logits of the next sample.

    Args:
        levels: number of sample ids V (input and output classes; 256 for 8-bit mu-law).
        residual_channels: channels R of the residual stream (the layers' inputs).
        gate_channels: pre-activations G of each gated unit (even: tanh and sigmoid halves).
        skip_channels: channels S of the skip outputs and of the head's hidden layer.
        kernel_size: taps k of each dilated causal convolution (>= 2).
        layers_per_stack: layers per stack; their dilations are 1, 2, ..., 2^(layers_per_stack - 1).
        stacks: number of stacks of dilated layers.
        num_classes: global conditioning on this many classes (0: none); label ``num_classes`` is
            the null label.
        local_channels: channels C of local conditioning features (0: none), e.g. log-mel bins.
        hop_length: samples per local frame: input position t takes frame t // hop_length.
        block_size: the longest training sequence and the context of recomputing generation; at
            least the receptive field; None: the receptive field.
    """

    target_offset = 1  # the logits at t predict sample t + 1

    def __init__(
        self,
        levels: int = 256,
        residual_channels: int = 32,
        gate_channels: int = 64,
        skip_channels: int = 128,
        kernel_size: int = 2,
        layers_per_stack: int = 10,
        stacks: int = 3,
        num_classes: int = 0,
        local_channels: int = 0,
        hop_length: int = 256,
        block_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ConfigError(f"WaveNet: {_KEY}.levels={levels} must be at least 2")
        for key, value in (
            ("residual_channels", residual_channels),
            ("skip_channels", skip_channels),
            ("layers_per_stack", layers_per_stack),
            ("stacks", stacks),
            ("hop_length", hop_length),
        ):
            if value < 1:
                raise ConfigError(f"WaveNet: {_KEY}.{key}={value} must be at least 1")
        if gate_channels < 2 or gate_channels % 2:
            raise ConfigError(
                f"WaveNet: {_KEY}.gate_channels={gate_channels} must be even and >= 2 "
                "(the tanh and sigmoid halves)"
            )
        if kernel_size < 2:
            raise ConfigError(f"WaveNet: {_KEY}.kernel_size={kernel_size} must be at least 2")
        for key, value in (("num_classes", num_classes), ("local_channels", local_channels)):
            if value < 0:
                raise ConfigError(f"WaveNet: {_KEY}.{key}={value} must be >= 0 (0: no conditioning)")
        self.levels, self.vocab_size, self.num_classes = levels, levels, num_classes
        self.residual_channels, self.gate_channels, self.skip_channels = (
            residual_channels,
            gate_channels,
            skip_channels,
        )
        self.kernel_size, self.local_channels, self.hop_length = kernel_size, local_channels, hop_length
        self.dilations: list[int] = [2**i for _ in range(stacks) for i in range(layers_per_stack)]
        n = len(self.dilations)
        if block_size is not None and block_size < self.receptive_field:
            raise ConfigError(
                f"WaveNet: {_KEY}.block_size={block_size} is shorter than the receptive field "
                f"{self.receptive_field}: set it to at least {self.receptive_field} (or null)"
            )
        self.block_size = self.receptive_field if block_size is None else block_size
        R, G, S = residual_channels, gate_channels, skip_channels
        self.embed = nn.Embedding(levels, R)
        self.dilated = nn.ModuleList(
            nn.Conv1d(R, G, kernel_size, dilation=d) for d in self.dilations
        )  # weight (G, R, k): tap j sees time t - (k - 1 - j) d
        # the residual (R) and skip (S) 1x1 convolutions of a layer as one; the last layer: skip only
        self.out = nn.ModuleList(nn.Conv1d(G // 2, (R if i < n - 1 else 0) + S, 1) for i in range(n))
        self.class_bias = nn.Embedding(num_classes + 1, n * G) if num_classes > 0 else None
        if self.class_bias is not None:
            nn.init.normal_(self.class_bias.weight, std=0.02)
        self.local_proj = nn.Conv1d(local_channels, n * G, 1, bias=False) if local_channels > 0 else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(), nn.Conv1d(S, levels, 1))

    @property
    def n_layers(self) -> int:
        """Number N of dilated layers, stacks * layers_per_stack."""
        return len(self.dilations)

    @property
    def receptive_field(self) -> int:
        """Inputs the output at t sees, t - receptive_field + 1 .. t: 1 + (k - 1) * sum of the dilations."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def init_cache(
        self,
        batch_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        spare: int = 256,
    ) -> WaveNetCache:
        """An empty cache (zero queues: the padding before time 0) for ``batch_size`` sequences.

        Args:
            batch_size: number of sequences B.
            device: where the queues live (default: the parameters' device).
            dtype: their dtype (default: the parameters' dtype).
            spare: free columns M of each queue (``WaveNetCache``): the inputs move to the front
                every M steps.
        """
        if spare < 1:
            raise ValueError(f"WaveNet: spare={spare} must be at least 1")
        weight = self.embed.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        k, R, M = self.kernel_size, self.residual_channels, spare
        return WaveNetCache(
            queues=[
                torch.zeros(batch_size, R, (k - 1) * d + M, device=device, dtype=dtype)
                for d in self.dilations
            ],
            spare=spare,
        )

    def init_rings(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> list[Tensor]:
        """Zero ring buffers for ``step``: one (B, R, (k - 1) d_l) per layer (module docstring).

        Args:
            batch_size: number of sequences B.
            device: where the rings live (default: the parameters' device).
            dtype: their dtype (default: the parameters' dtype).
        """
        weight = self.embed.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        k, R = self.kernel_size, self.residual_channels
        return [torch.zeros(batch_size, R, (k - 1) * d, device=device, dtype=dtype) for d in self.dilations]

    def _project_local(self, local: Optional[Tensor], B: int, end: int) -> Optional[Tensor]:
        """The local features projected for every layer, (B, N * G, F), checked to cover positions < end."""
        if self.local_proj is None:
            if local is not None:
                raise ValueError("WaveNet: got local features but local_channels=0 (no local conditioning)")
            return None
        frames = -(-end // self.hop_length)
        if (
            local is None
            or local.dim() != 3
            or local.shape[:2] != (B, self.local_channels)
            or (local.shape[2] < frames)
        ):
            got = "None" if local is None else str(tuple(local.shape))
            raise ValueError(
                f"WaveNet: local_channels={self.local_channels}, so local must be "
                f"({B}, {self.local_channels}, >= {frames}) features of {self.hop_length}-sample frames "
                f"covering {end} samples, got {got}"
            )
        return self.local_proj(local.to(self.local_proj.weight.dtype))  # (B, N * G, F)

    def forward(
        self,
        idx: Tensor,
        cond: Optional[Tensor] = None,
        local: Optional[Tensor] = None,
        cache: Optional[WaveNetCache] = None,
        offset: int = 0,
    ) -> Tensor:
        """Next-sample logits.

        Args:
            idx: (B, T) int64 sample ids in [0, levels); with ``cache``, the new samples only.
            cond: (B,) int64 labels in [0, num_classes] when ``num_classes > 0``, else None.
            local: (B, local_channels, F) features when ``local_channels > 0``, else None; frame f
                conditions the positions f * hop_length .. (f + 1) * hop_length - 1. With ``cache``,
                the features of the whole sequence, kept from the first call (later calls may
                give them again or None).
            cache: a ``WaveNetCache`` from ``init_cache``: the samples take positions
                ``cache.length ..``, the queues roll forward and ``cache.length`` grows by T.
            offset: without a cache, the position of ``idx[:, 0]`` in the sequence ``local`` covers
                (a window cropped from a longer sequence); it only moves the local frames.

        Returns:
            (B, T, levels) logits of the next sample after each position of ``idx``.
        """
        if idx.dim() != 2:
            raise ValueError(f"WaveNet: idx must be (B, T) int64 sample ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"WaveNet: the cache holds {cache.batch_size} sequences but idx has {B}")
        check_labels("WaveNet", self.num_classes, cond, B, allow_null=True, arg="cond")
        start = offset if cache is None else cache.length
        if cache is not None and cache.local is not None:
            loc = cache.local  # (B, N * G, F)
            if loc.shape[2] * self.hop_length < start + T:
                raise ValueError(
                    f"WaveNet: the cached local features cover {loc.shape[2]} frames of {self.hop_length} "
                    f"samples, fewer than the {start + T} samples seen: give local for the whole sequence"
                )
        else:
            loc = self._project_local(local, B, start + T)
            if cache is not None:
                cache.local = loc
        G = self.gate_channels
        bias = self.class_bias(cond)[:, :, None] if self.class_bias is not None else None  # (B, N * G, 1)
        if cache is not None and T == 1:
            if loc is not None:  # the frame of position start
                frame = loc[:, :, start // self.hop_length, None]  # (B, N * G, 1)
                bias = frame if bias is None else bias + frame
            logits = self._queue_step(idx[:, 0], bias, cache)[:, None]  # (B, 1, V)
            cache.length += 1
            return logits
        frames = None if loc is None else torch.arange(start, start + T, device=idx.device) // self.hop_length
        x = self.embed(idx).transpose(1, 2)  # (B, R, T)
        skip: Optional[Tensor] = None
        for i, (conv, out, d) in enumerate(zip(self.dilated, self.out, self.dilations, strict=True)):
            pad = (self.kernel_size - 1) * d
            if cache is None:
                past = F.pad(x, (pad, 0))  # (B, R, pad + T), zeros before time 0
            else:  # the queue's last pad inputs before time start, then the new ones
                q = cache.queues[i]  # (B, R, pad + M)
                c = pad + start - cache.base  # the column of time start
                past = torch.cat([q[:, :, c - pad : c].to(x.dtype), x], dim=2)  # (B, R, pad + T)
                q[:, :, :pad] = past[:, :, -pad:]  # times start + T - pad .. start + T - 1, base start + T
            pre = conv(past)  # (B, G, T)
            if bias is not None:
                pre = pre + bias[:, i * G : (i + 1) * G]
            if loc is not None:  # frame t // hop_length at position t, (B, G, T)
                pre = pre + loc[:, i * G : (i + 1) * G].index_select(2, frames)
            a, b = pre.chunk(2, dim=1)
            h = out(torch.tanh(a) * torch.sigmoid(b))  # (B, R + S, T) or (B, S, T)
            s = h[:, -self.skip_channels :]
            skip = s if skip is None else skip + s
            if i < self.n_layers - 1:
                x = x + h[:, : self.residual_channels]
        if cache is not None:
            cache.length = cache.base = start + T
        return self.head(skip).transpose(1, 2)  # (B, T, V)

    def step(
        self,
        idx: Tensor,
        input_pos: Tensor,
        rings: list[Tensor],
        cond: Optional[Tensor] = None,
        local: Optional[Tensor] = None,
    ) -> Tensor:
        """One sample per row through ring buffers at a position given as a tensor: the exportable
        form of fast generation (module docstring).

        Args:
            idx: (B, 1) int64 sample ids at position t.
            input_pos: (1,) int64 position t, the same for every row; positions 0, 1, ... in order
                (0 starts a new sequence).
            rings: ``init_rings(B)``, updated in place.
            cond: (B,) int64 labels in [0, num_classes] when ``num_classes > 0``, else None.
            local: (B, local_channels, F) features of the whole sequence when ``local_channels > 0``
                (frame t // hop_length conditions position t; F > t // hop_length), else None.

        Returns:
            (B, V) logits of sample t + 1.
        """
        if idx.dim() != 2 or idx.shape[1] != 1 or tuple(input_pos.shape) != (1,):
            raise ValueError(
                f"WaveNet.step: idx must be (B, 1) sample ids and input_pos (1,), got "
                f"{tuple(idx.shape)} and {tuple(input_pos.shape)}"
            )
        B = idx.shape[0]
        check_labels("WaveNet", self.num_classes, cond, B, allow_null=True, arg="cond")
        bias = self.class_bias(cond)[:, :, None] if self.class_bias is not None else None  # (B, N * G, 1)
        if self.local_proj is not None or local is not None:
            if local is not None and local.dim() == 3:  # the frame of position t only: a 1x1 projection
                local = local.index_select(2, input_pos // self.hop_length)  # (B, C, 1)
            frame = self._project_local(local, B, 1)  # (B, N * G, 1), or one line for a bad shape
            bias = frame if bias is None else bias + frame
        k = self.kernel_size
        back = torch.arange(k - 1, 0, -1, device=idx.device)  # (k - 1,): k - 1, ..., 1 dilations back

        def taps_of(i: int, x: Tensor) -> Tensor:  # x (B, R) at time t -> inputs at t - (k - 1) d .. t
            ring, d = rings[i], self.dilations[i]
            times = input_pos - d * back  # (k - 1,)
            past = ring.index_select(2, times % ring.shape[2])  # (B, R, k - 1)
            past = torch.where(times >= 0, past, 0.0)  # zeros before time 0, as forward's padding
            ring.index_copy_(2, input_pos % ring.shape[2], x[:, :, None].to(ring.dtype))  # over t - (k-1) d
            return torch.cat([past.to(x.dtype), x[:, :, None]], dim=2)  # (B, R, k)

        return self._step(idx[:, 0], bias, taps_of)

    def _queue_step(self, idx: Tensor, bias: Optional[Tensor], cache: WaveNetCache) -> Tensor:
        """One new sample per row through the queues of ``cache``: idx (B,) -> logits (B, V) (Paine
        et al. 2016): the new input goes to the next column of each queue and the k taps are one
        strided view (every d-th column)."""
        k, t = self.kernel_size, cache.length
        if t - cache.base >= cache.spare:  # no spare column left: the last inputs to the front
            for q, d in zip(cache.queues, self.dilations, strict=True):
                pad = (k - 1) * d
                q[:, :, :pad] = q[:, :, -pad:].clone()  # times t - pad .. t - 1
            cache.base = t

        def taps_of(i: int, x: Tensor) -> Tensor:  # x (B, R) at time t -> inputs at t - (k - 1) d .. t
            q, d = cache.queues[i], self.dilations[i]
            pad = (k - 1) * d
            c = pad + t - cache.base  # the column of time t
            q[:, :, c] = x
            return q[:, :, c - pad : c + 1 : d]  # (B, R, k)

        return self._step(idx, bias, taps_of)

    def _step(self, idx: Tensor, bias: Optional[Tensor], taps_of: Callable[[int, Tensor], Tensor]) -> Tensor:
        """One new sample per row: idx (B,) -> logits (B, V).

        The same computation as ``forward`` at one position, with the convolutions as matrix
        products over the k taps (the conv weights viewed as (out, in * k), no copies).
        ``taps_of(i, x)`` records layer i's input x (B, R) and returns its inputs at times
        t - (k - 1) d_i, ..., t - d_i, t, (B, R, k): from the queues or the rings.
        """
        k, G, R, S = self.kernel_size, self.gate_channels, self.residual_channels, self.skip_channels
        x = self.embed(idx)  # (B, R)
        B, H = x.shape[0], G // 2
        biases = [None] * self.n_layers if bias is None else bias[:, :, 0].split(G, dim=1)  # (B, G) each
        skip: Optional[Tensor] = None
        for i, (conv, out) in enumerate(zip(self.dilated, self.out, strict=True)):
            taps = taps_of(i, x).reshape(B, R * k)
            pre = F.linear(taps.to(x.dtype), conv.weight.view(G, R * k), conv.bias)  # (B, G)
            if biases[i] is not None:
                pre = pre + biases[i]
            h = F.linear(torch.tanh(pre[:, :H]) * torch.sigmoid(pre[:, H:]), out.weight.view(-1, H), out.bias)
            skip = h[:, -S:] if skip is None else skip + h[:, -S:]  # h: (B, R + S) or (B, S)
            if i < self.n_layers - 1:
                x = x + h[:, :R]
        return self.head(skip[:, :, None])[:, :, 0]  # (B, V)
