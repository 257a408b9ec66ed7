"""Convolutional encoder and decoder with spatial latents, for tokenizers and first stages.

The layout of van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE),
sec. 4.1: the encoder is stride-2 4x4 convolutions followed by residual 3x3 blocks ("ReLU, 3x3
conv, ReLU, 1x1 conv"), the decoder residual blocks followed by stride-2 4x4 transposed
convolutions. With ``norm="group"`` and ``activation="silu"`` the blocks are those of the latent
diffusion autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"), small. Used by ``lit_genai.vae.vqvae.VQVAE`` (latents quantised) and
``lit_genai.vae.autoencoder.KLAutoencoder`` (``double_latent``: mean and log-variance).

One stride-2 stage per entry of ``channel_mult``: an H x W image gives an (H / f) x (W / f) latent
with ``f = downsample = 2 ** len(channel_mult)``, e.g. 28 -> 14 -> 7 with two stages.

Every init argument is kept as an attribute of the same name, so a module that holds these networks
can record them as plain config (``lit_genai.pretrained.network_config``).

Shape legend: B batch, C image channels, H/W image size, c latent channels, h/w latent size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from lit_genai.errors import ConfigError

Norm = Literal["group", "batch", "none"]
Activation = Literal["silu", "relu"]


def _norm(kind: Norm, channels: int, num_groups: int) -> nn.Module:
    if kind == "group":
        # gcd(num_groups, channels) groups: num_groups itself whenever it divides the channels
        return nn.GroupNorm(math.gcd(num_groups, channels), channels, eps=1e-6)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _act(kind: Activation) -> nn.Module:
    return nn.SiLU() if kind == "silu" else nn.ReLU()


class ResidualBlock(nn.Module):
    """x + conv1x1(act(norm(conv3x3(act(norm(x)))))): VQ-VAE's residual block (sec. 4.1), with an
    optional normalisation before each activation. Channels and spatial size are kept."""

    def __init__(self, channels: int, norm: Norm, activation: Activation, num_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(norm, channels, num_groups),
            _act(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(norm, channels, num_groups),
            _act(activation),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)  # (B, ch, h, w)


def _check(name: str, image_size: int, channel_mult: Sequence[int], num_res_blocks: int) -> int:
    """The total downsampling factor, or a ConfigError naming the key to change."""
    if not channel_mult:
        raise ConfigError(f"{name}.channel_mult is empty: give one channel multiplier per stride-2 stage")
    factor = 2 ** len(channel_mult)
    if image_size % factor:
        raise ConfigError(
            f"{name}.image_size={image_size} is not divisible by 2**len(channel_mult)={factor}: "
            f"set {name}.init_args.channel_mult to fewer stages"
        )
    if num_res_blocks < 0:
        raise ConfigError(f"{name}.num_res_blocks={num_res_blocks} must be >= 0")
    return factor


def _check_norm(name: str, latent_size: int, width: int, norm: Norm, num_groups: int) -> None:
    """A ConfigError when the group norm at a 1x1 latent grid would normalise single values (torch
    raises "Expected more than 1 value per channel" at the first training step)."""
    if norm == "group" and latent_size == 1 and width // math.gcd(num_groups, width) == 1:
        raise ConfigError(
            f"{name}: a group norm of {width} groups of one channel at the 1x1 latent grid normalises "
            f"single values: set {name}.init_args.num_groups to leave 2+ channels per group, or use fewer "
            "channel_mult stages"
        )


def _check_batch(name: str, net: Encoder | Decoder, batch_size: int) -> None:
    """A ConfigError for a training batch of one image when batch norm meets the 1x1 latent grid: a
    single value per channel (torch: "Expected more than 1 value per channel when training")."""
    if net.training and net.norm == "batch" and batch_size * net.latent_size**2 == 1:
        raise ConfigError(
            f"{name}: batch norm at the 1x1 latent grid needs training batches of 2+ images: set "
            f"data.batch_size >= 2, {name}.init_args.norm: group, or fewer channel_mult stages"
        )


class Encoder(nn.Module):
    """Images (B, C, H, W) -> latents (B, c, H / f, W / f), or (B, 2c, ...) with ``double_latent``.

    Layout: stride-2 4x4 conv C -> ch_0; for each further stage norm, activation, stride-2 4x4 conv
    ch_{i-1} -> ch_i; ``num_res_blocks`` residual blocks at the lowest resolution; norm, activation
    and a 1x1 conv to the latent channels. ch_i = base_channels * channel_mult[i].

    Args:
        in_channels: Image channels C.
        image_size: Image height and width (checked against the data).
        base_channels: Width multiplied by ``channel_mult``.
        channel_mult: One entry per stride-2 stage (VQ-VAE's CIFAR-10 encoder: [1, 1] with 256).
        num_res_blocks: Residual blocks at the lowest resolution (VQ-VAE: 2).
        latent_channels: Latent channels c (VQ-VAE: the code dimension D).
        double_latent: Output 2c channels, the mean and the log-variance of a diagonal Gaussian
            posterior (the KL autoencoder of latent diffusion).
        norm: ``group`` (latent diffusion), ``batch`` or ``none`` (VQ-VAE).
        activation: ``silu`` (latent diffusion) or ``relu`` (VQ-VAE).
        num_groups: Groups of the group norm (reduced to a divisor of the channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        latent_channels: int = 64,
        double_latent: bool = False,
        norm: Norm = "group",
        activation: Activation = "silu",
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.base_channels = in_channels, image_size, base_channels
        self.channel_mult, self.num_res_blocks = [int(m) for m in channel_mult], num_res_blocks
        self.latent_channels, self.double_latent = latent_channels, double_latent
        self.norm, self.activation, self.num_groups = norm, activation, num_groups
        self.downsample = _check("model.encoder", image_size, self.channel_mult, num_res_blocks)

        widths = [base_channels * m for m in self.channel_mult]
        _check_norm("model.encoder", self.latent_size, widths[-1], norm, num_groups)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1)]
        for previous, width in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                _norm(norm, previous, num_groups),
                _act(activation),
                nn.Conv2d(previous, width, 4, stride=2, padding=1),
            ]
        layers += [ResidualBlock(widths[-1], norm, activation, num_groups) for _ in range(num_res_blocks)]
        out = latent_channels * (2 if double_latent else 1)
        layers += [_norm(norm, widths[-1], num_groups), _act(activation), nn.Conv2d(widths[-1], out, 1)]
        self.net = nn.Sequential(*layers)

    @property
    def latent_size(self) -> int:
        """Height and width h = w of the latent grid."""
        return self.image_size // self.downsample

    def forward(self, x: Tensor) -> Tensor:
        _check_batch("model.encoder", self, x.shape[0])
        return self.net(x)  # (B, C, H, W) -> (B, c or 2c, h, w)


class Decoder(nn.Module):
    """Latents (B, c, H / f, W / f) -> images (B, C, H, W), unbounded (the losses compare them with
    images in [-1, 1]; modules clamp what they return as images).

    Layout (the encoder mirrored): 3x3 conv c -> ch_last; ``num_res_blocks`` residual blocks; for
    each stage from the last, norm, activation, stride-2 4x4 transposed conv ch_i -> ch_{i-1}, the
    first stage's going straight to the image channels C.

    Args:
        out_channels: Image channels C.
        image_size: Image height and width (checked against the data).
        base_channels: Width multiplied by ``channel_mult``.
        channel_mult: One entry per stride-2 stage, in the encoder's order.
        num_res_blocks: Residual blocks at the lowest resolution.
        latent_channels: Latent channels c.
        norm: ``group``, ``batch`` or ``none``.
        activation: ``silu`` or ``relu``.
        num_groups: Groups of the group norm (reduced to a divisor of the channels).
    """

    def __init__(
        self,
        out_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        latent_channels: int = 64,
        norm: Norm = "group",
        activation: Activation = "silu",
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.out_channels, self.image_size, self.base_channels = out_channels, image_size, base_channels
        self.channel_mult, self.num_res_blocks = [int(m) for m in channel_mult], num_res_blocks
        self.latent_channels = latent_channels
        self.norm, self.activation, self.num_groups = norm, activation, num_groups
        self.downsample = _check("model.decoder", image_size, self.channel_mult, num_res_blocks)

        widths = [base_channels * m for m in self.channel_mult]
        _check_norm("model.decoder", self.latent_size, widths[-1], norm, num_groups)
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        layers += [ResidualBlock(widths[-1], norm, activation, num_groups) for _ in range(num_res_blocks)]
        targets = [out_channels, *widths[:-1]]  # stage i upsamples widths[i] -> targets[i]
        for i in reversed(range(len(widths))):
            layers += [
                _norm(norm, widths[i], num_groups),
                _act(activation),
                nn.ConvTranspose2d(widths[i], targets[i], 4, stride=2, padding=1),
            ]
        self.net = nn.Sequential(*layers)

    @property
    def latent_size(self) -> int:
        """Height and width h = w of the latent grid it decodes."""
        return self.image_size // self.downsample

    def forward(self, z: Tensor) -> Tensor:
        _check_batch("model.decoder", self, z.shape[0])
        return self.net(z)  # (B, c, h, w) -> (B, C, H, W)
