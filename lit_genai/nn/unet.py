"""The DDPM UNet: a noise-prediction network eps(x_t, t), optionally class-conditional.

A PyTorch port of the authors' ``diffusion_tf/models/unet.py`` from Ho et al. 2020, "Denoising
Diffusion Probabilistic Models", Appendix B: a Wide-ResNet UNet with group norm, a sinusoidal
timestep embedding added to every residual block, single-head self-attention at chosen
resolutions and in the middle block. Initialisation follows the TF code (Xavier-uniform weights,
zero biases, zero-initialised last conv of each residual branch and of the output). The CIFAR-10
configuration (the defaults) has 35,746,307 parameters, as the authors' model.

Text conditioning (Rombach et al. 2022, sec. 3.3; Nichol et al. 2022, GLIDE): with a ``text_encoder``,
a cross-attention block (``cross_attention.SpatialCrossAttention``) follows every residual block of the
``cross_attention_levels`` and the middle block's attention, and the pooled caption vector is added to
the timestep embedding; ``forward(x, t, y, context)`` takes the encoder's ``TextContext``. Without a
text encoder none of these layers exist, so class-conditional and unconditional UNets are unchanged
(their parameters, initialisation and outputs); an empty caption or no context adds exactly 0.

Shape legend: B batch, C channels, H/W spatial size, D embedding width (4 * base_channels),
ch = base_channels.
"""

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import PooledText, SpatialCrossAttention, TextContext, check_context
from lit_genai.nn.layers import check_labels


def _init(module: nn.Module, zero: bool = False) -> nn.Module:
    """Init a conv/linear as the TF code: Xavier-uniform (fan_avg) weights, or zeros; zero bias."""
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=1e-6)  # eps of tf.contrib.layers.group_norm


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps into (B, dim), as ``get_timestep_embedding`` of DDPM."""
    half = dim // 2
    # max(., 1): with dim 2 or 3 (base_channels 2 or 3) the one frequency is 1, not 0/0 = NaN
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / max(half - 1, 1))  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return F.pad(torch.cat([args.sin(), args.cos()], dim=1), (0, dim % 2))  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, + timestep projection, GroupNorm, SiLU, Dropout, conv3x3, residual."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch, num_groups), _init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = _init(nn.Linear(temb_dim, out_ch))
        self.norm2, self.dropout = _norm(out_ch, num_groups), nn.Dropout(dropout)
        self.conv2 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), zero=True)
        self.shortcut = _init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # (B, C_out, 1, 1) broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h  # (B, C_out, H, W)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a zero-initialised output projection."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, num_groups)
        self.q, self.k, self.v = (_init(nn.Conv2d(channels, channels, 1)) for _ in range(3))
        self.proj_out = _init(nn.Conv2d(channels, channels, 1), zero=True)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(2, 3) for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        h = h.transpose(2, 3).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 conv3x3 with the TF 'SAME' padding of the authors' code (one pixel right/bottom)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _init(nn.Conv2d(channels, channels, 3, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _init(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """The DDPM UNet (Ho et al. 2020, Appendix B), predicting a (B, out_channels, H, W) tensor.

    The defaults are the authors' CIFAR-10 model (35.7M parameters). H and W must be multiples of
    ``2 ** (len(channel_mult) - 1)``.

    Args:
        in_channels: Channels of the input image (1 for MNIST, 3 for CIFAR-10).
        out_channels: Channels of the output; ``None`` means ``in_channels`` (noise prediction).
            Use ``2 * in_channels`` to also predict a variance.
        base_channels: Width ``ch`` of the first level; level i has ``ch * channel_mult[i]`` channels,
            and the timestep embedding is ``4 * ch`` wide.
        channel_mult: Width multiplier of each resolution level; level i works at ``H / 2**i``.
        num_res_blocks: Residual blocks per level in the down path (the up path has one more).
        attention_levels: Indices into ``channel_mult`` of the levels that get self-attention after
            each residual block, in the down and up paths (the middle block always has one). The
            DDPM CIFAR-10 model uses ``(1,)``, i.e. 16x16 for 32x32 images.
        dropout: Dropout rate inside the residual blocks (0.1 for CIFAR-10 in DDPM).
        num_groups: GroupNorm groups; must divide ``base_channels * m`` for every m in ``channel_mult``.
        num_classes: Number of classes for class conditioning; 0 for an unconditional model. With
            ``num_classes > 0`` a label embedding is added to the timestep embedding; label
            ``num_classes`` is the "null" label of classifier-free guidance.
        text_encoder: A text encoder (``nn.text_encoder.TextEncoder``, ``nn.hf_text_encoder.HFTextEncoder``,
            ``pretrained.PretrainedTextEncoder``) whose context the network reads (module docstring);
            None: no text.
        cross_attention_levels: Indices into ``channel_mult`` of the levels whose residual blocks are
            followed by cross-attention to the text (the middle block always has one with a text
            encoder); Stable Diffusion attends at every level but the lowest resolution's.
        cross_attention_heads: Heads of the cross-attention blocks; divides every level's width.
        channels_last: Keep the 4-D weights and the input in ``torch.channels_last`` memory format
            (NHWC), so the convolutions run their channels-last kernels; same outputs to float
            round-off and the same parameters (benchmarks/switches.py measures it).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: Optional[int] = None,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        dropout: float = 0.1,
        num_groups: int = 32,
        num_classes: int = 0,
        text_encoder: Optional[nn.Module] = None,
        cross_attention_levels: Sequence[int] = (),
        cross_attention_heads: int = 4,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        ch, levels = base_channels, len(channel_mult)
        widths = [ch * m for m in channel_mult]
        if levels == 0:
            raise ConfigError("UNet: channel_mult must have at least one level")
        if bad := [w for w in (ch, *widths) if w % num_groups]:  # ch: the input conv's, normed first
            raise ConfigError(
                f"UNet: num_groups={num_groups} must divide every channel count, but base_channels={ch} "
                f"and the levels have {widths} channels ({bad} not divisible); pick num_groups dividing "
                f"base_channels={ch}"
            )
        for key, chosen in (
            ("attention_levels", attention_levels),
            ("cross_attention_levels", cross_attention_levels),
        ):
            if bad := [i for i in chosen if not 0 <= i < levels]:
                raise ConfigError(
                    f"UNet: {key} {bad} out of range; they index channel_mult (0..{levels - 1})"
                )
        if cross_attention_levels and text_encoder is None:
            raise ConfigError(
                "UNet: cross_attention_levels need a text_encoder to attend to; set one or drop them"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.out_channels = in_channels if out_channels is None else out_channels
        self.base_channels, self.multiple = ch, 2 ** (levels - 1)
        # the fewest channels a GroupNorm sees at the lowest level (its input, its own): forward's check
        self.num_groups, self._lowest_width = num_groups, min(widths[-2] if levels > 1 else ch, widths[-1])
        temb_dim = 4 * ch
        self.temb = nn.Sequential(
            _init(nn.Linear(ch, temb_dim)), nn.SiLU(), _init(nn.Linear(temb_dim, temb_dim))
        )
        self.label_emb = nn.Embedding(num_classes + 1, temb_dim) if num_classes > 0 else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, temb_dim, dropout, num_groups)

        def blocks(cin: int, w: int, level: int) -> nn.ModuleList:
            """A level's residual block, its self-attention and, with text, its cross-attention."""
            attn = AttnBlock(w, num_groups) if level in attention_levels else nn.Identity()
            if text_encoder is None:  # the layout (and parameter names) of the UNet without text
                return nn.ModuleList([res(cin, w), attn])
            cross = cross_attn(w) if level in cross_attention_levels else nn.Identity()
            return nn.ModuleList([res(cin, w), attn, cross])

        self.text_encoder = text_encoder
        if text_encoder is not None:
            context_dim = int(text_encoder.width)

            def cross_attn(w: int) -> SpatialCrossAttention:
                return SpatialCrossAttention(w, context_dim, cross_attention_heads)

            self.text_pool = PooledText(context_dim, temb_dim)

        self.conv_in = _init(nn.Conv2d(in_channels, ch, 3, padding=1))
        self.down, skips, c = nn.ModuleList(), [ch], ch  # skips: channels of each skip connection
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(blocks(c, w, i))
                skips.append(c := w)
            if i != levels - 1:
                self.down.append(Downsample(c))
                skips.append(c)
        self.mid = nn.ModuleList([res(c, c), AttnBlock(c, num_groups), res(c, c)])
        if text_encoder is not None:
            self.mid_cross = cross_attn(c)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(blocks(c + skips.pop(), w, i))
                c = w
            if i != 0:
                self.up.append(Upsample(c))
        self.norm_out = _norm(c, num_groups)
        self.conv_out = _init(nn.Conv2d(c, self.out_channels, 3, padding=1), zero=True)
        if channels_last:  # .to(device) and load_state_dict keep the layout
            self.to(memory_format=torch.channels_last)

    def forward(
        self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, context: Optional[TextContext] = None
    ) -> Tensor:
        """Predict from x (B, C, H, W), timesteps t (B,), labels y (B,) int64 in [0, num_classes] and
        the text encoder's ``context`` (None: no text).

        ``y=None`` means the null label for every item. An unconditional model (``num_classes == 0``)
        raises ValueError when given labels, rather than silently ignoring them.
        """
        B, C, H, W = x.shape
        if H % self.multiple or W % self.multiple:
            raise ConfigError(
                f"UNet: input size {H}x{W} must be a multiple of {self.multiple} in both dimensions "
                f"(2 ** (len(channel_mult) - 1)); resize or pad the images, or use fewer levels"
            )
        if H * W == self.multiple**2 and self._lowest_width == self.num_groups:
            raise ConfigError(
                f"UNet: {H}x{W} inputs are 1x1 at the lowest level, where num_groups={self.num_groups} "
                "leaves one channel per group (a GroupNorm of single values): use fewer channel_mult levels "
                "or a smaller num_groups"
            )
        if C != self.in_channels or t.shape != (B,):
            raise ValueError(
                f"UNet: expected x (B, {self.in_channels}, H, W) and t (B,), "
                f"got x {tuple(x.shape)} and t {tuple(t.shape)}"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        temb = self.temb(timestep_embedding(t, self.base_channels))  # (B, D)
        y = check_labels("UNet", self.num_classes, y, B, none_is_null=True, device=x.device)  # (B,) or None
        if self.label_emb is not None:
            temb = temb + self.label_emb(y)  # (B, D)
        check_context("UNet", self.text_encoder, context, B)
        if context is not None:
            temb = temb + self.text_pool(context.pooled)  # (B, D); + 0 for an empty caption

        def level(block: nn.ModuleList, h: Tensor) -> Tensor:
            resblock, attn, *cross = block  # cross: [] without a text encoder
            h = attn(resblock(h, temb))  # (B, ch * mult, H, W)
            if cross and context is not None and isinstance(cross[0], SpatialCrossAttention):
                h = cross[0](h, context)
            return h

        hs = [self.conv_in(x)]  # (B, ch, H, W)
        for block in self.down:
            if isinstance(block, Downsample):
                hs.append(block(hs[-1]))  # (B, C, H/2, W/2)
            else:
                hs.append(level(block, hs[-1]))
        h = self.mid[1](self.mid[0](hs[-1], temb))
        if context is not None:
            h = self.mid_cross(h, context)
        h = self.mid[2](h, temb)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)  # (B, C, 2H, 2W)
            else:
                h = level(block, torch.cat([h, hs.pop()], dim=1))  # (B, C + C_skip, H, W) in
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
