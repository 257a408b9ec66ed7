"""Gaussian encoders and decoders of variational autoencoders: MLP and small conv stacks.

Encoders map an image (and, for a conditional VAE, its label) to the mean and log-variance of a
diagonal Gaussian posterior q(z|x[, y]) over a latent vector; decoders map a latent vector (and the
label) to the raw parameters of p(x|z[, y]) of the same shape as the image: Bernoulli logits, or
the mean of a Gaussian or discretised logistic. The networks know nothing of the likelihood: the
scale of a Gaussian or logistic decoder, when learned, lives in ``lit_genai.vae.VAE``.

- ``MLPEncoder`` / ``MLPDecoder``: Kingma & Welling 2014 (App. C: one hidden layer of tanh units)
  and Burda et al. 2016 (IWAE, sec. 5: two deterministic layers of 200 tanh units around a
  50-dimensional latent for MNIST, 784-200-200-50).
- ``ConvEncoder`` / ``ConvDecoder``: stride-2 4x4 convolutions (DCGAN-like) with linear heads, for
  28x28 and 32x32 images.
- Conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
  Conditional Generative Models", sec. 4): with ``num_classes > 0`` the one-hot label is
  concatenated to the encoder's input (the flattened image for the MLP, the flattened convolutional
  features before the linear head for the conv encoder) and to z in the decoder.

Attributes read by ``paradigm.check_net``: ``in_channels`` (encoders) / ``out_channels``
(decoders), ``image_size``, ``num_classes``; the VAE reads ``latent_dim``.

Shape legend: B batch, C channels, H = W = image_size, D latent_dim, K num_classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.layers import check_labels

Activation = Literal["tanh", "relu"]
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: Sequence[int], activation: Activation) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _with_label(h: Tensor, y: Optional[Tensor], num_classes: int, name: str) -> Tensor:
    """(B, F) features -> (B, F + K) with the one-hot label appended (unchanged when unconditional)."""
    check_labels(name, num_classes, y, h.shape[0])
    if num_classes == 0:
        return h
    return torch.cat([h, F.one_hot(y, num_classes).to(h.dtype)], dim=1)


def _check_sizes(name: str, hidden: Sequence[int], latent_dim: int) -> None:
    if latent_dim < 1 or any(int(h) < 1 for h in hidden):
        raise ConfigError(
            f"{name}: latent_dim and hidden sizes must be >= 1, got {latent_dim} and {list(hidden)}"
        )


class MLPEncoder(nn.Module):
    """Fully connected Gaussian encoder: x (B, C, H, W) [, y (B,)] -> (mean, logvar), each (B, D).

    Args:
        in_channels: Image channels C.
        image_size: Image height and width.
        hidden: Widths of the hidden layers (IWAE on MNIST: [200, 200]).
        latent_dim: D, the size of z.
        activation: ``"tanh"`` (Kingma & Welling; IWAE) or ``"relu"``.
        num_classes: K > 0 makes it conditional (the one-hot label joins the input); 0 = unconditional.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: Sequence[int] = (200, 200),
        latent_dim: int = 50,
        activation: Activation = "tanh",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes("MLPEncoder", hidden, latent_dim)
        self.in_channels, self.image_size = in_channels, image_size
        self.latent_dim, self.num_classes = latent_dim, num_classes
        sizes = [in_channels * image_size * image_size + num_classes, *(int(h) for h in hidden)]
        self.body = _mlp(sizes, activation)
        self.head = nn.Linear(sizes[-1], 2 * latent_dim)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = _with_label(x.flatten(1), y, self.num_classes, "MLPEncoder")  # (B, CHW [+ K])
        mean, logvar = self.head(self.body(h)).chunk(2, dim=1)  # (B, D), (B, D)
        return mean, logvar


class MLPDecoder(nn.Module):
    """Fully connected decoder: z (B, D) [, y (B,)] -> raw output (B, C, H, W) (logits or means).

    Args:
        out_channels: Image channels C.
        image_size: Image height and width.
        hidden: Widths of the hidden layers, from z outwards (IWAE on MNIST: [200, 200]).
        latent_dim: D, the size of z.
        activation: ``"tanh"`` or ``"relu"``.
        num_classes: K > 0 makes it conditional (the one-hot label joins z); 0 = unconditional.
    """

    def __init__(
        self,
        out_channels: int = 1,
        image_size: int = 28,
        hidden: Sequence[int] = (200, 200),
        latent_dim: int = 50,
        activation: Activation = "tanh",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes("MLPDecoder", hidden, latent_dim)
        self.out_channels, self.image_size = out_channels, image_size
        self.latent_dim, self.num_classes = latent_dim, num_classes
        sizes = [latent_dim + num_classes, *(int(h) for h in hidden)]
        self.body = _mlp(sizes, activation)
        self.head = nn.Linear(sizes[-1], out_channels * image_size * image_size)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.body(_with_label(z, y, self.num_classes, "MLPDecoder"))  # (B, hidden[-1])
        return self.head(h).view(-1, self.out_channels, self.image_size, self.image_size)  # (B, C, H, W)


def _conv_layout(name: str, image_size: int, channels: Sequence[int]) -> int:
    """The side of the smallest feature map: image_size / 2^len(channels), which must be whole."""
    levels = len(channels)
    if levels < 1 or any(int(c) < 1 for c in channels):
        raise ConfigError(f"{name}: channels must be a non-empty list of widths >= 1, got {list(channels)}")
    if image_size % 2**levels:
        raise ConfigError(
            f"{name}: image_size={image_size} is not divisible by 2^{levels} (one halving per entry of "
            f"channels={list(channels)}); use fewer channels entries"
        )
    return image_size // 2**levels


class ConvEncoder(nn.Module):
    """Convolutional Gaussian encoder: x (B, C, H, W) [, y (B,)] -> (mean, logvar), each (B, D).

    Layers: one Conv(4x4, stride 2, padding 1) + activation per entry of ``channels`` (28 -> 14 -> 7
    for [32, 64]; 32 -> 16 -> 8 -> 4 for [32, 64, 128]), flatten, [one-hot label appended],
    Linear(hidden_dim) + activation, Linear(2 D).

    Args:
        in_channels: Image channels C.
        image_size: Image height and width, divisible by 2^len(channels) (28 with two levels, 32 with
            up to five).
        channels: Output channels of the stride-2 convolutions.
        hidden_dim: Width of the hidden linear layer.
        latent_dim: D, the size of z.
        activation: ``"relu"`` or ``"tanh"``.
        num_classes: K > 0 makes it conditional; 0 = unconditional.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        latent_dim: int = 16,
        activation: Activation = "relu",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        side = _conv_layout("ConvEncoder", image_size, channels)
        _check_sizes("ConvEncoder", [hidden_dim], latent_dim)
        self.in_channels, self.image_size = in_channels, image_size
        self.latent_dim, self.num_classes = latent_dim, num_classes
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(int(c_in), int(c_out), 4, stride=2, padding=1), _ACTIVATIONS[activation]()]
        self.convs = nn.Sequential(*layers)
        self.hidden = nn.Sequential(
            nn.Linear(int(channels[-1]) * side * side + num_classes, hidden_dim), _ACTIVATIONS[activation]()
        )
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        h = self.convs(x).flatten(1)  # (B, channels[-1] * side^2)
        h = self.hidden(_with_label(h, y, self.num_classes, "ConvEncoder"))  # (B, hidden_dim)
        mean, logvar = self.head(h).chunk(2, dim=1)  # (B, D), (B, D)
        return mean, logvar


class ConvDecoder(nn.Module):
    """Convolutional decoder: z (B, D) [, y (B,)] -> raw output (B, C, H, W) (logits or means).

    The mirror of ``ConvEncoder``: [one-hot label appended to z], Linear(hidden_dim) + activation,
    Linear to a (channels[-1], side, side) map, then one ConvTranspose(4x4, stride 2, padding 1) per
    entry of ``channels`` in reverse, with the activation between them and none after the last.

    Args:
        out_channels: Image channels C.
        image_size: Image height and width, divisible by 2^len(channels).
        channels: The encoder's convolution widths (listed from the image side, as in ``ConvEncoder``).
        hidden_dim: Width of the hidden linear layer.
        latent_dim: D, the size of z.
        activation: ``"relu"`` or ``"tanh"``.
        num_classes: K > 0 makes it conditional; 0 = unconditional.
    """

    def __init__(
        self,
        out_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        latent_dim: int = 16,
        activation: Activation = "relu",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.side = _conv_layout("ConvDecoder", image_size, channels)
        _check_sizes("ConvDecoder", [hidden_dim], latent_dim)
        self.out_channels, self.image_size = out_channels, image_size
        self.latent_dim, self.num_classes = latent_dim, num_classes
        widths = [int(c) for c in reversed(channels)]  # e.g. [64, 32]
        act = _ACTIVATIONS[activation]
        self.hidden = nn.Sequential(
            nn.Linear(latent_dim + num_classes, hidden_dim),
            act(),
            nn.Linear(hidden_dim, widths[0] * self.side * self.side),
            act(),
        )
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, [*widths[1:], out_channels], strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(widths) - 1:
                layers.append(act())
        self.deconvs = nn.Sequential(*layers)
        self.widths = widths

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.hidden(_with_label(z, y, self.num_classes, "ConvDecoder"))  # (B, widths[0] side^2)
        h = h.view(-1, self.widths[0], self.side, self.side)  # (B, widths[0], side, side)
        return self.deconvs(h)  # (B, C, H, W)
