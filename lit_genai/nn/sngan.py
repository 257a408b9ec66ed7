"""The SNGAN ResNet generator and discriminator (CIFAR-10, 32x32), optionally class-conditional.

Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral Normalization for Generative Adversarial
Networks", appendix B.4, Tables 4-5 ("ResNet architectures for CIFAR10"):
    G: z (128) -> dense -> 4x4x256 -> 3 x ResBlock up 256 -> BN, ReLU, conv3x3 -> tanh.
    D: ResBlock down 128 (the "optimized" first block) -> ResBlock down 128 -> ResBlock 128 ->
       ResBlock 128 -> ReLU -> global sum pooling -> dense -> 1.
This port follows the authors' Chainer code (pfnet-research/sngan_projection: gen_models/resnet_32.py,
dis_models/snresnet_32.py and the two resblocks.py): nearest-neighbour upsampling; Xavier-uniform
weights with gain sqrt(2) for the 3x3 convs inside residual blocks and gain 1 for the 1x1 shortcuts,
the dense layers, the output conv and the class embedding; zero biases; no bias on D's last dense
layer. Torch-Mimicry (Lee & Town 2020) uses the same gains but bilinear upsampling and a bias there.
With the defaults G has 4,276,739 and D 1,053,824 parameters (Mimicry's G 4.3M, D 1.0M).

Class conditioning (``num_classes > 0``, Miyato & Koyama 2018, "cGANs with Projection
Discriminator"): conditional batch norm in G's residual blocks (the last BN stays unconditional,
as in their code), and D's projection term <embed(y), phi(x)> on the pooled features.

WGAN-GP: ``spectral_norm=False, pooling="mean"`` with ``base_channels=128`` in both networks is the
ResNet of Gulrajani et al. 2017 (appendix F; their gan_cifar_resnet.py: DIM_G = DIM_D = 128, no
normalisation in the critic, mean pooling), up to initialisation (theirs is He-uniform) and the bias
of the critic's last dense layer.

Shape legend: B batch, C image channels, H = W = image_size, Z latent_dim, ch base_channels,
s0 = image_size / 8 the generator's start size, K number of classes.
"""

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.layers import ConditionalBatchNorm2d, check_labels, maybe_spectral_norm


def _init(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """Xavier-uniform weight with ``gain`` and zero bias: Chainer's GlorotUniform(gain) of the authors."""
    nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


class GBlock(nn.Module):
    """Generator residual block: BN, ReLU, up x2, conv3x3, BN, ReLU, conv3x3; shortcut up x2, conv1x1.

    Args:
        in_channels, out_channels: Channels of the input and output.
        num_classes: Classes of the conditional batch norms; 0 for plain batch norm.
        upsample: Double H and W (nearest neighbour, as Chainer's ``unpooling_2d``).
    """

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.b1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.c1 = _init(nn.Conv2d(in_channels, out_channels, 3, padding=1), math.sqrt(2))
        self.b2 = ConditionalBatchNorm2d(out_channels, num_classes)
        self.c2 = _init(nn.Conv2d(out_channels, out_channels, 3, padding=1), math.sqrt(2))
        learnable_sc = in_channels != out_channels or upsample
        self.c_sc = _init(nn.Conv2d(in_channels, out_channels, 1)) if learnable_sc else nn.Identity()

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if self.upsample else x  # (B, C, 2H, 2W)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = self.c1(self._up(F.relu(self.b1(x, y))))  # (B, C_out, 2H, 2W)
        h = self.c2(F.relu(self.b2(h, y)))
        return h + self.c_sc(self._up(x))  # (B, C_out, 2H, 2W)


class DBlock(nn.Module):
    """Discriminator residual block: [ReLU,] conv3x3, ReLU, conv3x3, [avg-pool 2]; shortcut conv1x1, pool.

    Args:
        in_channels, out_channels: Channels of the input and output.
        downsample: Halve H and W with 2x2 average pooling.
        optimized: The first block of D (Miyato et al. 2018): no ReLU before the first conv (the
            input is the image) and the shortcut pools before its conv1x1; always downsamples.
        spectral_norm: Spectrally normalise the convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: bool = False,
        optimized: bool = False,
        spectral_norm: bool = True,
    ):
        super().__init__()
        self.downsample, self.optimized = downsample or optimized, optimized
        hidden = out_channels if optimized else in_channels  # the authors' hidden_channels
        self.c1 = _init(nn.Conv2d(in_channels, hidden, 3, padding=1), math.sqrt(2))
        self.c2 = _init(nn.Conv2d(hidden, out_channels, 3, padding=1), math.sqrt(2))
        learnable_sc = in_channels != out_channels or self.downsample
        self.c_sc = _init(nn.Conv2d(in_channels, out_channels, 1)) if learnable_sc else nn.Identity()
        for conv in (self.c1, self.c2, self.c_sc):
            if isinstance(conv, nn.Conv2d):
                maybe_spectral_norm(conv, spectral_norm)

    def _down(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x  # (B, C, H/2, W/2)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.optimized else F.relu(x)
        h = self._down(self.c2(F.relu(self.c1(h))))  # (B, C_out, H/2, W/2)
        # avg-pool and a 1x1 conv commute; pooling first (optimized block) is cheaper on the image
        sc = self.c_sc(self._down(x)) if self.optimized else self._down(self.c_sc(x))
        return h + sc  # (B, C_out, H/2, W/2)


class ResNetGenerator(nn.Module):
    """SNGAN ResNet generator (Miyato et al. 2018, Table 4): z (B, Z) -> images (B, C, H, W) in [-1, 1].

    Args:
        latent_dim: Size Z of the noise vector (128 in the paper, drawn from N(0, I)).
        out_channels: Image channels C.
        base_channels: Width ch of every residual block (256 for SNGAN, 128 for WGAN-GP).
        image_size: Output height and width; a multiple of 8 (the start map is image_size / 8,
            4x4 for CIFAR-10, 6x6 for the paper's 48x48 STL-10 generator).
        num_classes: Number of classes for conditional batch norm; 0 for an unconditional generator.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        out_channels: int = 3,
        base_channels: int = 256,
        image_size: int = 32,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ConfigError(
                f"ResNetGenerator: image_size={image_size} must be a multiple of 8 (three x2 upsampling "
                f"blocks); for 28x28 MNIST use DCGANGenerator or resize the data to 32"
            )
        self.latent_dim, self.out_channels, self.image_size = latent_dim, out_channels, image_size
        self.num_classes, self.bottom_width, ch = num_classes, image_size // 8, base_channels
        self.l1 = _init(nn.Linear(latent_dim, self.bottom_width**2 * ch))
        self.blocks = nn.ModuleList([GBlock(ch, ch, num_classes, upsample=True) for _ in range(3)])
        self.b5 = nn.BatchNorm2d(ch)
        self.c5 = _init(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Generate (B, C, H, W) images in [-1, 1] from z (B, Z) and, if conditional, labels y (B,)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"ResNetGenerator: z must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        check_labels("ResNetGenerator", self.num_classes, y, z.shape[0])
        s0 = self.bottom_width
        h = self.l1(z).view(z.shape[0], -1, s0, s0)  # (B, ch, s0, s0)
        for block in self.blocks:
            h = block(h, y)  # (B, ch, 2H, 2W)
        return torch.tanh(self.c5(F.relu(self.b5(h))))  # (B, C, H, W)


class ResNetDiscriminator(nn.Module):
    """SNGAN ResNet discriminator (Miyato et al. 2018, Table 5): (B, C, H, W) -> (B,) logits.

    Args:
        in_channels: Image channels C.
        base_channels: Width ch of every block (128 for SNGAN and WGAN-GP).
        image_size: Input height and width; a multiple of 4 (two blocks halve it).
        num_classes: Number of classes for the projection term (Miyato & Koyama 2018); 0 for an
            unconditional critic.
        spectral_norm: Spectrally normalise every conv, the dense layer and the class embedding.
            False gives an unnormalised critic, as WGAN-GP's.
        pooling: Global pooling of the last feature map: "sum" (SNGAN) or "mean" (WGAN-GP's code).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 128,
        image_size: int = 32,
        num_classes: int = 0,
        spectral_norm: bool = True,
        pooling: Literal["sum", "mean"] = "sum",
    ) -> None:
        super().__init__()
        if image_size % 4 or image_size < 4:
            raise ConfigError(f"ResNetDiscriminator: image_size={image_size} must be a multiple of 4")
        if pooling not in ("sum", "mean"):
            raise ConfigError(f"ResNetDiscriminator: pooling={pooling!r}; choose 'sum' or 'mean'")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.pooling, ch = pooling, base_channels
        self.blocks = nn.Sequential(
            DBlock(in_channels, ch, optimized=True, spectral_norm=spectral_norm),
            DBlock(ch, ch, downsample=True, spectral_norm=spectral_norm),
            DBlock(ch, ch, spectral_norm=spectral_norm),
            DBlock(ch, ch, spectral_norm=spectral_norm),
        )
        self.l5 = maybe_spectral_norm(_init(nn.Linear(ch, 1, bias=False)), spectral_norm)
        self.l_y = None
        if num_classes > 0:
            self.l_y = maybe_spectral_norm(_init(nn.Embedding(num_classes, ch)), spectral_norm)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Score x (B, C, H, W) [with labels y (B,)]; returns (B,) logits."""
        B, C, H, W = x.shape
        if (C, H, W) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"ResNetDiscriminator: expected x (B, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(x.shape)}"
            )
        check_labels("ResNetDiscriminator", self.num_classes, y, B)
        h = F.relu(self.blocks(x))  # (B, ch, H/4, W/4)
        h = h.sum(dim=(2, 3)) if self.pooling == "sum" else h.mean(dim=(2, 3))  # (B, ch)
        out = self.l5(h)[:, 0]  # (B,)
        if self.l_y is not None:
            # Miyato & Koyama 2018, eq. 3: + y^T V phi(x)
            out = out + (self.l_y(y) * h).sum(dim=1)  # (B,)
        return out
