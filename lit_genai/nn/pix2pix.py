"""pix2pix networks: the U-Net generator and the PatchGAN discriminator, scaled to 28x28 / 32x32 images.

Isola, Zhu, Zhou & Efros 2017, "Image-to-Image Translation with Conditional Adversarial Networks",
sec. 3.2 and appendix 6.1.1, and the authors' PyTorch code (``networks.py``: ``UnetGenerator``,
``NLayerDiscriminator``):

- Generator (sec. 3.2.1, "U-Net"): an encoder of 4x4 stride-2 convolutions (Ck: Conv-BatchNorm-
  LeakyReLU(0.2) with k filters; no norm on the first) down to 1x1, a decoder of 4x4 stride-2
  transposed convolutions (CDk: with dropout 0.5 in the three innermost, ReLU), and skip connections
  concatenating encoder layer i to decoder layer n - i; a tanh output. The paper's 256x256 network
  goes down 8 times (C64-C128-C256-C512-C512-C512-C512-C512); a 32x32 image goes down 5 times with
  the same widths capped at 8F (F-2F-4F-8F-8F), the innermost block without norm, as in the code;
  any power of two >= 32 goes down to 1x1 the same way (256: the paper's network).
  28x28 images are padded (replicate) to 32x32 and the output cropped back.
- Discriminator (sec. 3.2.2, "PatchGAN"): a fully convolutional classifier of overlapping patches,
  conditional on the source: it sees concat(source, image) (sec. 3.1: "both the generator and
  discriminator observe the input"). The paper's 70x70 PatchGAN is C64-C128-C256-C512 (three
  stride-2 layers, one stride-1 layer) and a 4x4 stride-1 convolution to 1 channel: receptive field
  70 of 256 pixels. ``n_layers`` is the number of stride-2 layers (3 in the paper); for 28-32 pixel
  images ``n_layers=1`` gives the 16x16 patches of the paper's Table 3 (half the image, the nearest
  the layout gives to 70/256 of the side). ``receptive_field`` says how many pixels one logit sees.

Weights ~ N(0, 0.02), batch-norm gains ~ N(1, 0.02) (the code's ``init_type='normal'``).

Shape legend: B batch, Cs source channels, C image channels, H = W = image_size, F base_channels,
h x w the PatchGAN's grid of logits.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError

Norm = Literal["batch", "instance"]


def _padded_size(image_size: int) -> int:
    """The power-of-two size the U-Net works at: 32 for 28 (MNIST, padded), else the size itself."""
    padded = 32 if image_size == 28 else image_size
    if padded < 32 or padded & (padded - 1):
        raise ConfigError(
            f"UNetGenerator: image_size={image_size} is not supported; use 28 or a power of two >= 32 "
            "(resize the data with the DataModule)"
        )
    return padded


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """Batch norm (pix2pix) or instance norm without affine parameters (CycleGAN's code default)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ConfigError(f"norm={kind!r}: choose 'batch' or 'instance'")


def init_weights_(module: nn.Module) -> None:
    """The pix2pix / CycleGAN code's ``init_type='normal'``: conv weights ~ N(0, 0.02), biases 0, norm
    gains ~ N(1, 0.02); for ``Module.apply``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class _SkipBlock(nn.Module):
    """One U-Net level: down, the inner levels, up, then concat(x, up) (the code's
    ``UnetSkipConnectionBlock``); the outermost level returns the tanh output without the concat."""

    def __init__(
        self,
        outer: int,
        inner: int,
        inside: Optional[nn.Module],
        norm: Norm,
        dropout: float,
        in_channels: Optional[int] = None,
        outermost: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = norm == "instance"  # batch norm has its own bias
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1, bias=use_bias)
        up_in = inner if inside is None else inner * 2  # innermost: no skip below it
        if outermost:
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
            layers = [down, inside, nn.ReLU(True), up, nn.Tanh()]
        elif inside is None:  # innermost (1x1): no norm after the down convolution, as in the code
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, norm_layer(norm, outer)]
        else:
            up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down, norm_layer(norm, inner), inside]
            layers += [nn.ReLU(True), up, norm_layer(norm, outer)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*[m for m in layers if m is not None])

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)  # (B, 2 * outer, H, W): the skip connection


class UNetGenerator(nn.Module):
    """pix2pix U-Net generator: (B, Cs, H, W) source in [-1, 1] -> (B, C, H, W) image in [-1, 1].

    Args:
        in_channels: Channels of the source image (Cs).
        out_channels: Channels of the generated image (C).
        image_size: 28 (padded to 32 inside) or a power of two >= 32 (the paper's 256).
        base_channels: F, filters of the first layer (the paper's 64); levels have F, 2F, 4F, 8F, 8F.
        norm: ``batch`` (the paper) or ``instance``.
        dropout: Dropout in the decoder's innermost levels (the paper's 0.5: its noise source; 0 = off).
        dropout_levels: How many decoder levels next to the innermost have dropout (the paper: 3 of
            8 at 256x256; 2 of 5 suit 32x32).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        image_size: int = 32,
        base_channels: int = 64,
        norm: Norm = "batch",
        dropout: float = 0.5,
        dropout_levels: int = 2,
    ) -> None:
        super().__init__()
        padded = _padded_size(image_size)
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        f = base_channels
        levels = padded.bit_length() - 1  # down to 1x1: 5 at 32x32, 8 at 256x256 (the paper's)
        widths = [f * min(2**i, 8) for i in range(levels)]  # F, 2F, 4F, 8F, 8F, ...
        block: Optional[nn.Module] = None
        # Build from the inside out: level i maps widths[i - 1] channels to widths[i].
        for level in range(levels - 1, 0, -1):
            innermost_rank = levels - 1 - level  # 0 = innermost
            p = dropout if 0 < innermost_rank <= dropout_levels else 0.0
            block = _SkipBlock(widths[level - 1], widths[level], block, norm, p)
        self.net = _SkipBlock(out_channels, f, block, norm, 0.0, in_channels=in_channels, outermost=True)
        self.apply(init_weights_)

    def forward(self, source: Tensor) -> Tensor:
        size = self.image_size
        pad = (_padded_size(size) - size) // 2
        if pad:
            source = F.pad(source, (pad, pad, pad, pad), mode="replicate")  # (B, Cs, 32, 32)
        out = self.net(source)  # (B, C, 32, 32)
        return out[..., pad : pad + size, pad : pad + size] if pad else out  # (B, C, H, W)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (image (B, C, H, W), source (B, Cs, H, W) or None) -> (B, 1, h, w) logits, one per patch.

    Args:
        in_channels: Channels of the judged image (C).
        source_channels: Channels of the source it is conditioned on (pix2pix); 0 = unconditional
            (CycleGAN's discriminators see one domain's images only).
        image_size: Height and width of the images (for the shape checks and ``receptive_field``).
        base_channels: F, filters of the first layer (the paper's 64); then 2F, 4F, 8F at most.
        n_layers: Stride-2 layers (the paper's 70x70 PatchGAN: 3; 1 gives 16x16 patches).
        norm: ``batch`` (pix2pix) or ``instance`` (CycleGAN).
    """

    def __init__(
        self,
        in_channels: int = 1,
        source_channels: int = 0,
        image_size: int = 32,
        base_channels: int = 64,
        n_layers: int = 1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if n_layers < 0:
            raise ConfigError(f"PatchDiscriminator: n_layers={n_layers} must be >= 0")
        self.in_channels, self.source_channels, self.image_size = in_channels, source_channels, image_size
        use_bias = norm == "instance"
        f = base_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + source_channels, f, 4, stride=2 if n_layers else 1, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        width = f
        for i in range(1, n_layers + 1):  # stride 2 for the first n_layers - 1, then one stride-1 layer
            out = f * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(norm, out),
            ]
            layers.append(nn.LeakyReLU(0.2, True))
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))  # (B, 1, h, w) logits
        self.net = nn.Sequential(*layers)
        self.apply(init_weights_)

    @property
    def receptive_field(self) -> int:
        """Pixels (per side) of the input that one output logit sees (70 for the paper's n_layers=3)."""
        field = 1
        for m in reversed([m for m in self.net if isinstance(m, nn.Conv2d)]):
            field = (field - 1) * m.stride[0] + m.kernel_size[0]
        return field

    def forward(self, image: Tensor, source: Optional[Tensor] = None) -> Tensor:
        if (source is None) != (self.source_channels == 0):
            raise ValueError(
                f"PatchDiscriminator(source_channels={self.source_channels}) got "
                f"{'no' if source is None else 'a'} source image"
            )
        x = image if source is None else torch.cat([source, image], dim=1)  # (B, Cs + C, H, W)
        return self.net(x)  # (B, 1, h, w)
