"""Gated PixelCNN: an autoregressive model of pixels (or of VQ token maps) with masked convolutions.

Papers: van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN Decoders" (the gated
PixelCNN: sec. 2.1 gated units, eq. 2; sec. 2.2 the vertical and horizontal stacks that remove the
blind spot, Fig. 2; sec. 2.3 conditioning, eq. 4), and van den Oord et al. 2016a, "Pixel Recurrent
Neural Networks" (sec. 3.4: masks A and B, and the channel masks of colour images).

Token order (the data's, ``lit_genai.data.pixels.ImagePixels``): raster order with the channels
innermost, position p = (h * W + w) * C + c. The logits at position p predict token p itself from
the tokens at positions < p only (``target_offset = 0``), so one forward pass gives the likelihood of
a whole image and sampling fills the positions one by one.

The two stacks, each a chain of gated layers (y = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h),
eq. 4, with a learned per-class bias V h):

- vertical stack: the features at row i see the rows above only (i - 1, i - 2, ...), every column of
  a (k // 2) x k window per layer (the first layer's window excludes row i, later layers' include it,
  and row i of their input already sees rows < i only);
- horizontal stack: the features at (i, j) see the pixels (i, j - k // 2 .. j) of the same row, and
  the vertical stack's pre-activations at (i, j) through a 1 x 1 convolution (sec. 2.2), with a
  residual connection from layer to layer.

Together they see every earlier pixel: the vertical stack's field grows by one row and one column
each way per layer, the horizontal stack's by k // 2 columns to the left, and no pixel above-right is
missed (the blind spot of the original PixelCNN, Fig. 1 of the 2016b paper).

Channels (PixelRNN sec. 3.4): the feature maps of the horizontal stack are split into C groups, group
c belonging to channel c. At the current pixel, group c sees the input channels < c (mask A, the
first layer) or the feature groups <= c (mask B, every later layer and the output head), so the
logits of channel c depend on the earlier pixels and on channels < c of the same pixel (R -> G -> B).
The vertical stack sees strictly earlier rows only and needs no channel mask.

Input: ``"intensity"`` feeds the tokens as the paper feeds pixels, 2 t / (levels - 1) - 1 in
[-1, 1] per channel; ``"embedding"`` looks each token up in a learned table (categorical tokens such
as a VQ-VAE's codes, whose ids carry no order; one channel).

Exact incremental sampling (``GatedPixelCNN.sample_in_place``): the vertical stack at row i sees rows
< i only, so its pre-activations at row i are computed once per row, from the vertical features of
the rows above kept layer by layer (the rows i - r .. i - 1 each layer's window needs); within the
row only the horizontal stack changes, and its features at (i, j) need the vertical pre-activations
at (i, j) and the horizontal features at columns j - r .. j of the same row, kept per layer. Each
token then costs one column of the horizontal stack and of the output head, instead of a forward
pass over the rows up to i; the logits are those of ``forward`` (to float round-off).

Shape legend: B batch, C/H/W image, N = C * H * W positions, L levels (the vocabulary), F = hidden
feature maps, K classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.layers import check_labels

_KEY = "model.net.init_args"

Draw = Callable[[Tensor, int], Tensor]  # (logits (B, L), position p) -> (B,) int64 tokens at p


def channel_groups(features: int, groups: int, parts: int = 1) -> Tensor:
    """The channel group of each of ``features`` feature maps: (features,) int64.

    The maps are ``parts`` consecutive parts (the tanh and sigmoid halves of a gated unit's
    pre-activations), each cut into ``groups`` contiguous blocks; block c belongs to channel c.
    """
    per_part = features // parts
    return (torch.arange(features) % per_part) // (per_part // groups)


def channel_mask(out_groups: Tensor, in_groups: Tensor, mask_type: Literal["A", "B"]) -> Tensor:
    """(out, in) 0/1 float mask of the connections at the current pixel (PixelRNN sec. 3.4): an output
    map of group c sees the input maps of groups < c (mask A) or <= c (mask B)."""
    if mask_type == "A":
        allowed = in_groups[None, :] < out_groups[:, None]
    else:
        allowed = in_groups[None, :] <= out_groups[:, None]
    return allowed.float()


class MaskedConv2d(nn.Conv2d):
    """A convolution without padding whose weight is multiplied by a fixed 0/1 ``mask`` of its shape.

    The masked weights stay exactly zero in the product, so they get no gradient and no input they
    mask ever reaches the output. The mask is not saved in the state dict (it follows from the
    configuration).
    """

    def __init__(self, in_channels: int, out_channels: int, mask: Tensor) -> None:
        super().__init__(in_channels, out_channels, tuple(mask.shape[2:]))
        self.register_buffer("mask", mask, persistent=False)  # (out, in, kh, kw)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias)


def _gate(pre: Tensor) -> Tensor:
    """Gated activation unit, eq. 2: tanh(first half) * sigmoid(second half) of the channels."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks (Fig. 2 of van den Oord et al. 2016b, without the blind spot).

    Args:
        in_channels: input feature maps of both stacks.
        hidden: feature maps F of the outputs (2F pre-activations).
        kernel_size: k (odd); the vertical window is (k // 2 [+ 1]) x k, the horizontal 1 x (k // 2 + 1).
        mask_type: ``"A"`` (first layer: the current pixel's own channel and later ones hidden) or
            ``"B"`` (later layers).
        in_groups: (in_channels,) channel group of each input map of the horizontal stack.
        groups: C, the channel groups of the outputs.
        num_classes: K classes of the per-class bias (0: none); the embedding has K + 1 rows, the
            last the null label.
        residual: add the horizontal input to its output (needs in_channels == hidden).
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        kernel_size: int,
        mask_type: Literal["A", "B"],
        in_groups: Tensor,
        groups: int,
        num_classes: int,
        residual: bool,
    ) -> None:
        super().__init__()
        self.hidden, self.mask_type, self.residual = hidden, mask_type, residual
        self.radius = r = kernel_size // 2
        # vertical: rows i - r .. i - 1 (A) or i - r .. i (B), columns j - r .. j + r
        self.v_conv = nn.Conv2d(in_channels, 2 * hidden, (r + (mask_type == "B"), kernel_size))
        # horizontal: columns j - r .. j of row i; the last column (the current pixel) is channel-masked
        pre_groups = channel_groups(2 * hidden, groups, parts=2)  # (2F,)
        h_mask = torch.ones(2 * hidden, in_channels, 1, r + 1)
        h_mask[:, :, 0, r] = channel_mask(pre_groups, in_groups, mask_type)
        self.h_conv = MaskedConv2d(in_channels, 2 * hidden, h_mask)
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # vertical pre-activations into the horizontal
        out_groups = channel_groups(hidden, groups)  # (F,)
        self.h_out = MaskedConv2d(hidden, hidden, channel_mask(out_groups, out_groups, "B")[:, :, None, None])
        # eq. 4: V^T h, a learned bias per class for the vertical (2F) and horizontal (2F) pre-activations
        self.class_bias = nn.Embedding(num_classes + 1, 4 * hidden) if num_classes > 0 else None
        if self.class_bias is not None:
            nn.init.normal_(self.class_bias.weight, std=0.02)

    def forward(self, v: Tensor, h: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """v, h (B, in_channels, H, W), cond (B,) int64 or None -> v, h (B, F, H, W)."""
        H, r = v.shape[2], self.radius
        v_pre = self.v_conv(F.pad(v, (r, r, r, 0)))[:, :, :H]  # (B, 2F, H, W); mask A: crop row H
        h_pre = self.h_conv(F.pad(h, (r, 0, 0, 0)))  # (B, 2F, H, W)
        if self.class_bias is not None:
            bias_v, bias_h = self.class_bias(cond)[:, :, None, None].chunk(2, dim=1)  # (B, 2F, 1, 1) each
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        h_pre = h_pre + self.v_to_h(v_pre)  # the vertical stack sees rows < i only: no mask needed
        v_out = _gate(v_pre)  # (B, F, H, W)
        h_out = self.h_out(_gate(h_pre))  # (B, F, H, W)
        return v_out, h + h_out if self.residual else h_out

    # ---- incremental sampling (GatedPixelCNN.sample_in_place): one row of v, one column of h

    def vertical_row(self, window: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """The vertical stack of this layer at one row i, as in ``forward``.

        Args:
            window: (B, in_channels, rows, W + 2r) the layer's vertical input at rows i - r .. i - 1
                (mask A, rows = r) or i - r .. i (mask B, rows = r + 1), zero-padded as in ``forward``.
            bias: (B, 4F) the class bias ``class_bias(cond)``, or None.

        Returns:
            v (B, F, W): the vertical output at row i; vh (B, W, 2F): what the horizontal
            pre-activations at row i add to ``h_conv``'s masked product, ``v_to_h`` of the vertical
            pre-activations plus the biases of ``h_conv`` and of the class.
        """
        v_pre = self.v_conv(window)[:, :, 0]  # (B, 2F, W)
        bias_v, bias_h = (None, None) if bias is None else bias.chunk(2, dim=1)  # (B, 2F) each
        if bias_v is not None:
            v_pre = v_pre + bias_v[:, :, None]
        vh = self.v_to_h(v_pre[:, :, None])[:, :, 0] + self.h_conv.bias[:, None]  # (B, 2F, W)
        if bias_h is not None:
            vh = vh + bias_h[:, :, None]
        return _gate(v_pre), vh.transpose(1, 2).contiguous()

    def column_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The horizontal stack's masked weights as matrices for ``horizontal_column``: h_conv's
        ((r + 1) in_channels, 2F), columns j - r .. j outermost, h_out's (F, F) and h_out's bias (F,)."""
        w_h = (self.h_conv.weight * self.h_conv.mask)[:, :, 0]  # (2F, in, r + 1)
        w_out = (self.h_out.weight * self.h_out.mask)[:, :, 0, 0]  # (F, F)
        return w_h.permute(2, 1, 0).reshape(-1, w_h.shape[0]), w_out.t(), self.h_out.bias

    def horizontal_column(self, window: Tensor, vh: Tensor, weights: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The horizontal stack of this layer at one pixel (i, j), as in ``forward``.

        Args:
            window: (B, r + 1, in_channels) the horizontal input at columns j - r .. j of row i
                (zeros left of the image), channels last.
            vh: (B, 2F) ``vertical_row``'s vh at column j.
            weights: ``column_weights()``.

        Returns:
            (B, F) the horizontal output at (i, j).
        """
        w_h, w_out, b_out = weights
        h_pre = torch.addmm(vh, window.reshape(window.shape[0], -1), w_h)  # (B, 2F)
        h_out = torch.addmm(b_out, _gate(h_pre), w_out)  # (B, F)
        return window[:, -1] + h_out if self.residual else h_out


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over token images: (B, N) token ids -> (B, N, L) logits (module docstring).

    Args:
        image_shape: (C, H, W) of the token images (channels of pixels, or 1 for token maps).
        levels: The vocabulary L: 2 for binarised images, 256 for 8-bit pixels, K for VQ codes.
        input: ``"intensity"``: token t enters as 2 t / (L - 1) - 1 per channel, as the paper feeds
            pixels; ``"embedding"``: a learned embedding of each token (categorical tokens; C = 1).
        hidden: Feature maps F of each stack; divisible by C.
        n_layers: Gated layers (mask B) after the first (mask A) one.
        kernel_size: Kernel size k (odd) of the gated layers after the first.
        first_kernel_size: Kernel size (odd, >= 3) of the first, mask-A, layer.
        output_hidden: Feature maps of the 1 x 1 output head; divisible by C.
        num_classes: Class conditioning with this many classes (0: unconditional): a learned bias per
            class in every gated unit (eq. 4); label ``num_classes`` is the null label (classifier-free
            guidance, unconditional samples).
    """

    target_offset = 0  # the logits at position p predict token p from the tokens before it

    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int,
        input: Literal["intensity", "embedding"] = "intensity",
        hidden: int = 64,
        n_layers: int = 7,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        output_hidden: int = 256,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(int(s) for s in image_shape) < 1:
            raise ConfigError(f"GatedPixelCNN: {_KEY}.image_shape={list(image_shape)} must be [C, H, W]")
        C, H, W = (int(s) for s in image_shape)
        if levels < 2:
            raise ConfigError(f"GatedPixelCNN: {_KEY}.levels={levels} must be at least 2")
        if input not in ("intensity", "embedding"):
            raise ConfigError(f"GatedPixelCNN: {_KEY}.input={input!r}; choose 'intensity' or 'embedding'")
        if input == "embedding" and C != 1:
            raise ConfigError(
                f"GatedPixelCNN: {_KEY}.input='embedding' needs one channel but image_shape has C={C}: "
                "set input: intensity"
            )
        for key, value in (("hidden", hidden), ("output_hidden", output_hidden)):
            if value < C or value % C:
                raise ConfigError(f"GatedPixelCNN: {_KEY}.{key}={value} must be a multiple of C={C}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"GatedPixelCNN: {_KEY}.kernel_size={kernel_size} must be odd")
        if first_kernel_size < 3 or first_kernel_size % 2 == 0:
            raise ConfigError(
                f"GatedPixelCNN: {_KEY}.first_kernel_size={first_kernel_size} must be odd, >= 3"
            )
        if n_layers < 0 or num_classes < 0:
            raise ConfigError(f"GatedPixelCNN: {_KEY}.n_layers and num_classes must be >= 0")
        self.image_shape: tuple[int, int, int] = (C, H, W)
        self.in_channels, self.image_size = C, H if H == W else None  # paradigm.check_net's names
        self.vocab_size, self.block_size, self.num_classes = levels, C * H * W, num_classes
        self.tokens_per_row = W * C  # idx may hold the first rows only: a multiple of this
        self.levels, self.input, self.hidden = levels, input, hidden

        if input == "embedding":
            self.embedding: Optional[nn.Embedding] = nn.Embedding(levels, hidden)
            in_channels, in_groups = hidden, torch.zeros(hidden, dtype=torch.long)
        else:
            self.embedding = None
            in_channels, in_groups = C, torch.arange(C)  # input channel c is group c
        self.layers = nn.ModuleList(
            [GatedLayer(in_channels, hidden, first_kernel_size, "A", in_groups, C, num_classes, False)]
        )
        groups = channel_groups(hidden, C)  # (F,)
        for _ in range(n_layers):
            self.layers.append(GatedLayer(hidden, hidden, kernel_size, "B", groups, C, num_classes, True))
        # output head (PixelRNN sec. 3.4): ReLU, 1 x 1, ReLU, 1 x 1 to C groups of L logits, mask B
        head_groups = channel_groups(output_hidden, C)
        logit_groups = channel_groups(C * levels, C)  # logits of channel c: maps c L .. (c + 1) L - 1
        self.head_hidden = MaskedConv2d(
            hidden, output_hidden, channel_mask(head_groups, groups, "B")[:, :, None, None]
        )
        self.head_out = MaskedConv2d(
            output_hidden, C * levels, channel_mask(logit_groups, head_groups, "B")[:, :, None, None]
        )
        # Zero biases: otherwise the residual stack sums one random bias per layer into its features,
        # which then outweigh the input at init, and whole groups of the head's ReLUs start off.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Logits of every token given the tokens before it.

        Args:
            idx: (B, N) int64 token ids in [0, L), N = C * H * W in raster order, channels innermost;
                or the tokens of the first r rows only, N = r * W * C (``tokens_per_row``): the logits
                of those positions are the same, as no layer looks at later rows, at r / H of the
                cost (sampling row r needs the rows up to r only).
            cond: (B,) int64 labels in [0, num_classes] (num_classes: the null label) when
                ``num_classes > 0``, else None.

        Returns:
            (B, N, L) logits; those at position p depend on the tokens at positions < p only.
        """
        C, H, W = self.image_shape
        row = self.tokens_per_row
        if idx.dim() != 2 or idx.shape[1] % row or not 0 < idx.shape[1] <= self.block_size:
            raise ValueError(
                f"GatedPixelCNN: idx must be (B, {self.block_size}) token ids of {C}x{H}x{W} images "
                f"(or their first rows, a multiple of {row} tokens), got shape {tuple(idx.shape)}"
            )
        B, rows = idx.shape[0], idx.shape[1] // row
        check_labels("GatedPixelCNN", self.num_classes, cond, B, allow_null=True, arg="cond")
        tokens = idx.view(B, rows, W, C).permute(0, 3, 1, 2)  # (B, C, rows, W)
        if self.embedding is not None:
            x = self.embedding(tokens[:, 0]).permute(0, 3, 1, 2)  # (B, F, rows, W)
        else:
            x = tokens.to(self.head_out.weight.dtype) * (2.0 / (self.levels - 1)) - 1.0  # (B, C, rows, W)
        return self.logits_of_input(x, cond)

    def _input_row(self, tokens: Tensor) -> Tensor:
        """(B, W, C) tokens of one row -> (B, W, C) intensities or (B, W, F) embeddings, as ``forward``."""
        if self.embedding is not None:
            return self.embedding(tokens[:, :, 0])
        return tokens.to(self.head_out.weight.dtype) * (2.0 / (self.levels - 1)) - 1.0

    @torch.no_grad()
    def sample_in_place(self, seq: Tensor, start: int, draw: Draw, cond: Optional[Tensor] = None) -> Tensor:
        """Fill positions ``start`` .. N - 1 of ``seq`` in raster order, exactly as a loop of full
        forward passes would (module docstring, "Exact incremental sampling").

        For each position p >= start, ``draw(logits, p)`` is called with the logits ``forward(seq,
        cond)[:, p]`` would give for the tokens now in ``seq`` (equal to float round-off) and its
        tokens are written to ``seq[:, p]`` before the next position. Within a pixel the channels come
        in the order R, G, B (c = 0 .. C - 1). Cost: one row of the vertical stack per row and one
        column of the horizontal stack and the head per position, with no gradients; the caller sets
        eval mode (no layer here depends on it).

        Args:
            seq: (B, N) contiguous int64 tokens, N = ``block_size``; positions < ``start`` are kept
                (a prompt), the later ones are overwritten.
            start: the first position to draw, 0 <= start <= N.
            draw: ``(logits (B, L), p) -> (B,) int64`` tokens for position p (e.g. filtered sampling
                with a generator, or argmax).
            cond: (B,) int64 labels as in ``forward``.

        Returns:
            ``seq``, filled.
        """
        C, H, W = self.image_shape
        if seq.dim() != 2 or seq.shape[1] != self.block_size or not 0 <= start <= self.block_size:
            raise ValueError(
                f"GatedPixelCNN: sample_in_place needs seq (B, {self.block_size}) and 0 <= start <= "
                f"{self.block_size}, got shape {tuple(seq.shape)} and start={start}"
            )
        B = seq.shape[0]
        check_labels("GatedPixelCNN", self.num_classes, cond, B, allow_null=True, arg="cond")
        layers: list[GatedLayer] = list(self.layers)  # type: ignore[arg-type]
        radii = [layer.radius for layer in layers]
        widths = [layer.v_conv.in_channels for layer in layers]  # input maps of each layer
        biases = [None if layer.class_bias is None else layer.class_bias(cond) for layer in layers]
        weights = [layer.column_weights() for layer in layers]
        w_head = (self.head_hidden.weight * self.head_hidden.mask)[:, :, 0, 0]  # (out hidden, F)
        w_logits = (self.head_out.weight * self.head_out.mask)[:, :, 0, 0]  # (C L, out hidden)
        L, tokens = self.levels, seq.view(B, H, W, C)
        dtype, device = w_head.dtype, seq.device
        # vertical input of layer l at the rows i - r .. i - 1 above the current one: (B, in, r, W + 2r)
        above = [
            torch.zeros(B, n, r, W + 2 * r, dtype=dtype, device=device)
            for n, r in zip(widths, radii, strict=True)
        ]
        first_row = start // (W * C)  # rows before it are all prompt: the vertical stack only
        for i in range(H):
            vh = []  # per layer (B, W, 2F)
            v_row: Optional[Tensor] = None  # (B, F, W) the vertical output of the layer below at row i
            for k, layer in enumerate(layers):
                if v_row is None:  # mask A: rows i - r .. i - 1 of the input
                    window = above[k]
                else:  # mask B: rows i - r .. i of the layer below's output
                    r = radii[k]
                    window = torch.cat([above[k], F.pad(v_row, (r, r))[:, :, None]], dim=2)
                    above[k] = window[:, :, 1:]
                v_row, vh_l = layer.vertical_row(window, biases[k])
                vh.append(vh_l)
            # the horizontal input of every layer at row i: (B, r + W, in), zeros left of the image
            rows_h = [
                torch.zeros(B, r + W, n, dtype=dtype, device=device)
                for n, r in zip(widths, radii, strict=True)
            ]
            rows_h[0][:, radii[0] :] = self._input_row(tokens[:, i])  # prompt tokens (later ones masked)
            for j in range(W if i >= first_row else 0):
                base = (i * W + j) * C
                first = start - base  # the pixel's first channel to draw
                for c in range(max(first, 0), C) if first < C else [C]:  # [C]: a prompt pixel, features
                    h = None  # (B, F): the horizontal output of the layer below at (i, j)
                    for k, layer in enumerate(layers):
                        if h is not None:
                            rows_h[k][:, radii[k] + j] = h
                        window = rows_h[k][:, j : j + radii[k] + 1]  # (B, r + 1, in)
                        h = layer.horizontal_column(window, vh[k][:, j], weights[k])
                    if c == C:
                        continue
                    hidden = F.linear(F.relu(h), w_head, self.head_hidden.bias)  # (B, out hidden)
                    logits = F.linear(F.relu(hidden), w_logits, self.head_out.bias)  # (B, C L)
                    token = draw(logits[:, c * L : (c + 1) * L], base + c)  # (B,)
                    tokens[:, i, j, c] = token
                    if self.embedding is not None:
                        rows_h[0][:, radii[0] + j] = self.embedding(token)
                    else:
                        rows_h[0][:, radii[0] + j, c] = token.to(dtype) * (2.0 / (L - 1)) - 1.0
            r = radii[0]
            x_row = F.pad(rows_h[0][:, r:].transpose(1, 2), (r, r))  # (B, in, W + 2r): row i, final
            above[0] = torch.cat([above[0][:, :, 1:], x_row[:, :, None]], dim=2)
        return seq

    def logits_of_input(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """The network after the input layer: ``forward`` without the token lookup.

        Args:
            x: (B, C, H, W) intensities in [-1, 1] (``input="intensity"``) or (B, F, H, W) token
                embeddings (``"embedding"``); differentiable, e.g. to inspect the receptive field.
            cond: as in ``forward`` (not checked here).

        Returns:
            (B, N, L) logits in the token order of ``forward``.
        """
        C, W = self.image_shape[0], self.image_shape[2]
        B, H = x.shape[0], x.shape[2]  # H: all rows, or the first ones
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, cond)  # (B, F, H, W) each
        out = self.head_out(F.relu(self.head_hidden(F.relu(h))))  # (B, C L, H, W)
        out = out.view(B, C, self.levels, H, W).permute(0, 3, 4, 1, 2)  # (B, H, W, C, L)
        return out.reshape(B, H * W * C, self.levels)  # (B, N, L)
