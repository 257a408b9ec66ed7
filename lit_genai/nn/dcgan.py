"""DCGAN generator and discriminator for 28x28, 32x32 and 64x64 images.

Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", sec. 3 and Fig. 1: the generator maps z through a stack of
fractionally-strided convolutions (ConvTranspose 4x4, stride 2) with batch norm and ReLU to a tanh
image; the discriminator mirrors it with stride-2 convolutions, batch norm on every layer but the
first, and LeakyReLU(0.2). Weights are drawn from N(0, 0.02) (sec. 4), batch-norm gains from
N(1, 0.02), and convolutions carry no bias (the authors' dcgan.torch code, as the PyTorch DCGAN
example). The 64x64 layout is the paper's (Fig. 1) and the PyTorch example's: 3,576,704 and
2,765,568 parameters for F = 64, Z = 100, C = 3. 32x32 drops one level; 28x28 (MNIST) starts from
7x7 instead of 4x4.

Class conditioning (``num_classes > 0``): conditional batch norm in the generator (de Vries et al.
2017) whose gains and biases are linear maps of a 128-d class embedding (BigGAN's form, Brock et
al. 2019), the one-hot label concatenated to z (Radford et al.'s conditional MNIST DCGAN), and a
projection discriminator (Miyato & Koyama 2018): logit = psi(phi(x)) + <embed(y), sum_HW phi(x)>,
with phi(x) the last feature map and psi the final convolution. With per-class batch-norm tables
alone the generator stayed nearly class-blind on MNIST (see ``DCGANGenerator``).

Shape legend: B batch, C image channels, H = W = image_size, Z latent_dim, F base_channels,
s0 start size (7 for 28x28, 4 otherwise), K number of classes.
"""

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.layers import ConditionalBatchNorm2d, check_labels, maybe_spectral_norm

ImageSize = Literal[28, 32, 64]
# image_size -> (s0, number of x2 upsamplings from s0)
_LAYOUTS: dict[int, tuple[int, int]] = {28: (7, 2), 32: (4, 3), 64: (4, 4)}


def _layout(name: str, image_size: int) -> tuple[int, int]:
    if image_size not in _LAYOUTS:
        raise ConfigError(
            f"{name}: image_size={image_size} is not supported; choose one of {sorted(_LAYOUTS)} "
            f"(resize the data with the DataModule)"
        )
    return _LAYOUTS[image_size]


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016, sec. 4), for ``model.apply(dcgan_init_)``.

    Conv, ConvTranspose, Linear and Embedding weights ~ N(0, 0.02), biases 0; batch-norm gains
    ~ N(1, 0.02), biases 0 (also the per-class gain and bias tables of ``ConditionalBatchNorm2d``;
    with a class embedding, ``embed_dim > 0``, its own init: embedding N(0, 1), projections 0, i.e.
    gain 1 and bias 0 for every class). ``Module.apply`` visits children first, so the conditional
    batch norm's rule wins over the Embedding / Linear rule for its own parameters.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ConditionalBatchNorm2d) and module.embed is not None:
        module.reset_class_parameters()
    elif isinstance(module, ConditionalBatchNorm2d) and module.num_classes > 0:
        nn.init.normal_(module.gain.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias.weight)


class DCGANGenerator(nn.Module):
    """DCGAN generator: z (B, Z) [and labels y (B,)] -> images (B, C, H, W) in [-1, 1].

    Layers: ConvTranspose(Z -> F 2^(n-1), s0x s0) + BN + ReLU, then n - 1 ConvTranspose(4, stride 2)
    + BN + ReLU halving the channels, then ConvTranspose(4, stride 2) to C channels + tanh, with
    n = 2, 3, 4 upsamplings for 28, 32, 64 (64x64: 512-256-128-64 channels for F = 64, the paper's).

    Args:
        latent_dim: Size Z of the noise vector z (100 in the paper).
        out_channels: Image channels C (1 for MNIST, 3 for CIFAR-10 / CelebA).
        image_size: Output height and width: 28, 32 or 64.
        base_channels: Width F of the last hidden layer; each layer before it doubles it.
        num_classes: Number of classes for conditional batch norm; 0 for an unconditional generator.
        class_embed_dim: Size E of the class embedding from which each conditional batch norm
            computes its gains and biases (gain_y = 1 + W_g e_y, bias_y = W_b e_y; BigGAN uses
            E = 128); 0 = per-class gain and bias tables, as Miyato & Koyama 2018. Ignored when
            unconditional. Why: Adam moves each parameter by about lr per step at most while its
            gradient keeps its sign (Kingma & Ba 2015, sec. 2.1), and a table entry alone sets one
            class's gain of one channel. On MNIST (dcgan_mnist.yaml with 10 classes, lr 2e-4)
            the tables' class spread after 1,890 generator steps was 0.35 at most (lr x steps =
            0.38) while the projection discriminator already ranked the true class first for
            85% of real digits; the samples matched their class 18% of the time (EMA). Through
            the embedding, an offset sums E such moves.
        class_input: Also feed the class to the first layer: z is concatenated with the one-hot
            label, as in conditional GANs (Mirza & Osindero 2014) and Radford et al.'s conditional
            MNIST DCGAN (dcgan_code, mnist/train_cond_dcgan.py: ``Z = T.concatenate([Z, Y])``).
            Why: conditional batch norm only scales and shifts whole channels, and the first
            layer, a bias-free ConvTranspose of z, is odd in z, so it cannot draw a z-independent
            class layout at s0 x s0; the one-hot label's weights in that layer can. (A 128-d
            N(0, 1) class embedding in place of the one-hot label outweighed z: every class
            collapsed to one image within 945 generator steps.)
            Measured on MNIST at 1,260 generator steps (cond_acc, EMA): tables only 0.15,
            embedding 0.29, one-hot input 0.44, both (the defaults) 0.47; both reach 0.90 at
            3,780 steps and 0.98 at 5,670 (experiments/gan/dcgan_mnist_cond.yaml).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        out_channels: int = 3,
        image_size: ImageSize = 32,
        base_channels: int = 64,
        num_classes: int = 0,
        class_embed_dim: int = 128,
        class_input: bool = True,
    ) -> None:
        super().__init__()
        s0, n_up = _layout("DCGANGenerator", image_size)
        self.latent_dim, self.out_channels, self.image_size = latent_dim, out_channels, image_size
        self.num_classes = num_classes
        widths = [base_channels * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. [512, 256, 128, 64]
        E = class_embed_dim if num_classes > 0 else 0
        self.class_input = class_input and num_classes > 0
        z_in = latent_dim + (num_classes if self.class_input else 0)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(z_in, widths[0], s0, 1, 0, bias=False)])
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(widths[0], num_classes, embed_dim=E)])
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            self.convs.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False))
            self.norms.append(ConditionalBatchNorm2d(c_out, num_classes, embed_dim=E))
        self.conv_out = nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1, bias=False)
        self.apply(dcgan_init_)

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Generate (B, C, H, W) images in [-1, 1] from z (B, Z) and, if conditional, labels y (B,)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"DCGANGenerator: z must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        check_labels("DCGANGenerator", self.num_classes, y, z.shape[0])
        if self.class_input:
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)  # (B, Z + K)
        h = z[:, :, None, None]  # (B, Z [+ K], 1, 1)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = torch.relu(norm(conv(h), y))  # (B, F 2^k, s0 2^i, s0 2^i)
        return torch.tanh(self.conv_out(h))  # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: images (B, C, H, W) [and labels y (B,)] -> logits (B,).

    Layers: Conv(C -> F, 4, stride 2) + LeakyReLU(0.2) (no batch norm on the input layer, as in the
    paper), n - 1 Conv(4, stride 2) + BN + LeakyReLU doubling the channels, then a Conv over the
    whole s0 x s0 map to one logit.

    Args:
        in_channels: Image channels C.
        image_size: Input height and width: 28, 32 or 64.
        base_channels: Width F of the first layer; each following layer doubles it.
        num_classes: Number of classes for the projection term; 0 for an unconditional critic.
        batch_norm: Batch norm after every conv but the first and last (the paper). Turn it off for
            a WGAN-GP critic (Gulrajani et al. 2017 use none: the penalty is per example); the
            convs then get biases.
        spectral_norm: Spectral normalisation of every conv and of the class embedding (Miyato et al.
            2018 use it without batch norm).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: ImageSize = 32,
        base_channels: int = 64,
        num_classes: int = 0,
        batch_norm: bool = True,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        s0, n_down = _layout("DCGANDiscriminator", image_size)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        widths = [base_channels * 2**i for i in range(n_down)]  # e.g. [64, 128, 256, 512]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm))
            layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
            layers.append(nn.LeakyReLU(0.2))
        self.features = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(widths[-1], 1, s0, 1, 0, bias=False)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes > 0 else None
        self.apply(dcgan_init_)
        for m in list(self.modules()):  # a list: registering a parametrization adds submodules
            if isinstance(m, (nn.Conv2d, nn.Embedding)):
                maybe_spectral_norm(m, spectral_norm)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Score x (B, C, H, W) [with labels y (B,)]; returns (B,) logits."""
        B, C, H, W = x.shape
        if (C, H, W) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"DCGANDiscriminator: expected x (B, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(x.shape)}"
            )
        check_labels("DCGANDiscriminator", self.num_classes, y, B)
        h = self.features(x)  # (B, F 2^(n-1), s0, s0)
        out = self.conv_out(h).flatten()  # (B,)
        if self.embed is not None:
            # Miyato & Koyama 2018, eq. 3: + y^T V phi(x), phi(x) sum-pooled over positions
            out = out + (self.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)  # (B,)
        return out
