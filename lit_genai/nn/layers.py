"""Layers and checks shared by the networks: class-conditional batch norm and optional spectral norm
(the GAN networks), and the class-label check every network runs in its forward.

Implements:
    - de Vries et al. 2017, "Modulating early visual processing by language", and Dumoulin et al.
      2017, "A Learned Representation for Artistic Style": conditional batch norm, i.e. batch norm
      whose gain and bias are looked up per class. Used by the class-conditional generators of
      Miyato & Koyama 2018, "cGANs with Projection Discriminator" (their
      ``CategoricalConditionalBatchNormalization``: gains initialised to 1, biases to 0). With
      ``embed_dim > 0`` the gains and biases are linear maps of a learned class embedding instead
      of per-class tables, gain = 1 + W_g e_y, bias = W_b e_y (Brock et al. 2019, BigGAN, sec. 3:
      an embedding "linearly projected to each layer's gains and biases"; BigGAN shares one
      embedding across layers, here each layer has its own).
    - Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks": weights
      divided by their largest singular value, estimated by one power iteration per training step
      (``torch.nn.utils.parametrizations.spectral_norm``).

Shape legend: B batch, C channels, H/W spatial size, K number of classes (label K: the null label of
classifier-free guidance, in networks that have one).
"""

from typing import Optional, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

M = TypeVar("M", bound=nn.Module)


def maybe_spectral_norm(module: M, enabled: bool) -> M:
    """Wrap ``module.weight`` in a spectral-norm parametrization when ``enabled``.

    Initialise the weight before calling this: the power iteration starts from the weight at
    registration, and afterwards ``module.weight`` is computed from
    ``module.parametrizations.weight.original``.
    """
    return _spectral_norm(module) if enabled else module


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm with a per-class gain and bias; plain ``BatchNorm2d`` when ``num_classes == 0``.

    Args:
        num_features: Channels C of the input.
        num_classes: Number of classes K; 0 gives an ordinary affine batch norm that ignores labels.
        eps: Added to the batch variance.
        momentum: Momentum of the running statistics.
        embed_dim: 0 (default): per-class tables ``gain`` (K, C) = 1 and ``bias`` (K, C) = 0, as
            Miyato & Koyama's code. E > 0: a class embedding ``embed`` (K, E) ~ N(0, 1) and
            bias-free linear maps ``gain``, ``bias`` (E -> C) initialised to 0, so gain_y = 1 +
            W_g e_y and bias_y = W_b e_y (BigGAN). Both start class-blind (gain 1, bias 0 for every
            class), but Adam moves each parameter by about lr per step at most while its gradient
            keeps its sign (Kingma & Ba 2015, sec. 2.1): a table entry, which alone sets one
            class's gain of one channel, needs ~1 / lr steps to move by 1 (5,000 at lr 2e-4),
            while W e_y sums E such moves, so the class offsets can move up to ~E times faster.
            Short GAN runs (the DCGAN MNIST demo: 5,670 generator steps) need this.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int = 0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        embed_dim: int = 0,
    ):
        super().__init__()
        self.num_features, self.num_classes, self.embed_dim = num_features, num_classes, embed_dim
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=num_classes == 0)
        self.embed: Optional[nn.Embedding] = None
        if num_classes > 0 and embed_dim > 0:
            self.embed = nn.Embedding(num_classes, embed_dim)  # (K, E) e_y
            self.gain = nn.Linear(embed_dim, num_features, bias=False)  # gamma_y = 1 + W_g e_y
            self.bias = nn.Linear(embed_dim, num_features, bias=False)  # beta_y = W_b e_y
            self.reset_class_parameters()
        elif num_classes > 0:
            self.gain = nn.Embedding(num_classes, num_features)  # (K, C) gamma_y
            self.bias = nn.Embedding(num_classes, num_features)  # (K, C) beta_y
            self.reset_class_parameters()

    def reset_class_parameters(self) -> None:
        """Every class at gain 1, bias 0; the embedding (if any) ~ N(0, 1)."""
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 1.0)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        elif self.num_classes > 0:
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def class_affine(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example gain and bias, each (B, C), of labels y (B,)."""
        if self.embed is not None:
            e = self.embed(y)  # (B, E)
            return 1 + self.gain(e), self.bias(e)
        return self.gain(y), self.bias(y)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Normalise x (B, C, H, W) with the gain and bias of labels y (B,) int64; returns (B, C, H, W)."""
        h = self.bn(x)
        if self.num_classes == 0:
            return h
        if y is None:
            raise ValueError("ConditionalBatchNorm2d: this layer is class-conditional and needs labels y")
        gain, bias = self.class_affine(y)  # (B, C) each
        return gain[:, :, None, None] * h + bias[:, :, None, None]  # de Vries et al. 2017, eq. 2


def check_labels(
    name: str,
    num_classes: int,
    y: Optional[Tensor],
    batch_size: int,
    *,
    allow_null: bool = False,
    none_is_null: bool = False,
    device: Optional[torch.device] = None,
    arg: str = "y",
) -> Optional[Tensor]:
    """The class labels a network's forward uses, or ValueError naming the network when y does not fit.

    Every network checks its labels here, so that all refuse the same inputs with the same message:
    labels for an unconditional network (``num_classes == 0``), and anything but (B,) int64 labels
    for a conditional one. Checks shape and dtype only: checking label values would sync the device
    every step, and ``nn.Embedding`` rejects labels outside its table itself.

    Args:
        name: The network's class name, which starts the message.
        num_classes: Number of classes K of the network; 0 for an unconditional network.
        y: The labels given to the network, (B,) int64 or None.
        batch_size: B, the batch size of the network's other input.
        allow_null: Whether label K is valid: the null label of classifier-free guidance, for
            networks whose label table has K + 1 rows. Only changes the message.
        none_is_null: Whether ``y=None`` means the null label K for every example (the diffusion
            denoisers); otherwise a conditional network refuses ``y=None``. Implies ``allow_null``.
        device: Where the null labels of ``none_is_null`` are made.
        arg: The name of the labels argument in the network's forward, for the message.

    Returns:
        None for an unconditional network; else y, or (B,) null labels K when y is None and
        ``none_is_null``.
    """
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"{name}: got class labels {arg} but num_classes=0 (an unconditional network)")
        return None
    if y is None and none_is_null:
        return torch.full((batch_size,), num_classes, dtype=torch.long, device=device)  # (B,) null
    if y is None or y.shape != (batch_size,) or y.dtype != torch.long:
        got = "None" if y is None else f"{y.dtype} {tuple(y.shape)}"
        labels = (
            f"[0, {num_classes}] ({num_classes}: the null label)"
            if allow_null or none_is_null
            else f"[0, {num_classes})"
        )
        none = " or None (the null label for every example)" if none_is_null else ""
        raise ValueError(
            f"{name}: num_classes={num_classes}, so {arg} must be ({batch_size},) int64 labels in "
            f"{labels}{none}, got {got}"
        )
    return y
