"""The CycleGAN generator: Johnson et al.'s residual translation network, for 28x28 / 32x32 images.

Zhu, Park, Isola & Efros 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks", appendix 7.2, after Johnson, Alahi & Fei-Fei 2016: c7s1-64, d128, d256,
R256 x n, u128, u64, c7s1-3 (c7s1-k: 7x7 Conv-InstanceNorm-ReLU, stride 1, reflection padding;
dk: 3x3 stride-2 Conv-InstanceNorm-ReLU; Rk: residual block of two 3x3 convolutions; uk: 3x3
stride-1/2 transposed Conv-InstanceNorm-ReLU), 6 blocks at 128x128 and 9 at 256x256, a tanh output.
Here the widths are F, 2F, 4F (the paper's F = 64) and the number of blocks is ``n_blocks``; two
stride-2 steps take 28 -> 14 -> 7 and 32 -> 16 -> 8. The discriminators are
``nn.pix2pix.PatchDiscriminator`` with ``source_channels=0`` and instance norm.

Shape legend: B batch, C channels, H = W = image_size, F base_channels.
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.pix2pix import Norm, init_weights_, norm_layer


class _Residual(nn.Module):
    """Rk: x + Conv-Norm-ReLU-Conv-Norm(x), reflection padded (the code's ``ResnetBlock``, no dropout)."""

    def __init__(self, width: int, norm: Norm) -> None:
        super().__init__()
        bias = norm == "instance"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=bias),
            norm_layer(norm, width),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=bias),
            norm_layer(norm, width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CycleGANGenerator(nn.Module):
    """(B, C_in, H, W) image of one domain in [-1, 1] -> (B, C_out, H, W) image of the other in [-1, 1].

    Args:
        in_channels: Channels of the input domain.
        out_channels: Channels of the output domain.
        image_size: Height and width (even, so the two stride-2 steps come back to it: 28 or 32 here).
        base_channels: F (the paper's 64).
        n_blocks: Residual blocks at the bottleneck (the paper: 6 at 128x128, 9 at 256x256).
        norm: ``instance`` (the paper) or ``batch``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 64,
        n_blocks: int = 6,
        norm: Norm = "instance",
    ) -> None:
        super().__init__()
        if image_size % 4 != 0:
            raise ConfigError(f"CycleGANGenerator: image_size={image_size} must be a multiple of 4 (28, 32)")
        if n_blocks < 0:
            raise ConfigError(f"CycleGANGenerator: n_blocks={n_blocks} must be >= 0")
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        f, bias = base_channels, norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, f, 7, bias=bias),
            norm_layer(norm, f),
            nn.ReLU(True),
        ]  # c7s1-F
        for k in (1, 2):  # d2F, d4F: (B, F, H, W) -> (B, 4F, H/4, W/4)
            layers += [nn.Conv2d(f * k, f * 2 * k, 3, stride=2, padding=1, bias=bias)]
            layers += [norm_layer(norm, f * 2 * k), nn.ReLU(True)]
        layers += [_Residual(4 * f, norm) for _ in range(n_blocks)]
        for k in (4, 2):  # u2F, uF: back to (B, F, H, W)
            layers += [
                nn.ConvTranspose2d(f * k, f * k // 2, 3, stride=2, padding=1, output_padding=1, bias=bias)
            ]
            layers += [norm_layer(norm, f * k // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(f, out_channels, 7), nn.Tanh()]  # c7s1-C
        self.net = nn.Sequential(*layers)
        self.apply(init_weights_)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, C_out, H, W)
