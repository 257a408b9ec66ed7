"""Layers shared by the GAN networks: class-conditional batch norm and optional spectral norm.

Implements:
    - de Vries et al. 2017, "Modulating early visual processing by language", and Dumoulin et al.
      2017, "A Learned Representation for Artistic Style": conditional batch norm, i.e. batch norm
      whose gain and bias are looked up per class. Used by the class-conditional generators of
      Miyato & Koyama 2018, "cGANs with Projection Discriminator" (their
      ``CategoricalConditionalBatchNormalization``: gains initialised to 1, biases to 0).
    - Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks": weights
      divided by their largest singular value, estimated by one power iteration per training step
      (``torch.nn.utils.parametrizations.spectral_norm``).

Shape legend: B batch, C channels, H/W spatial size, K number of classes.
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
    """

    def __init__(self, num_features: int, num_classes: int = 0, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features, self.num_classes = num_features, num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=num_classes == 0)
        if num_classes > 0:
            self.gain = nn.Embedding(num_classes, num_features)  # (K, C) gamma_y
            self.bias = nn.Embedding(num_classes, num_features)  # (K, C) beta_y
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Normalise x (B, C, H, W) with the gain and bias of labels y (B,) int64; returns (B, C, H, W)."""
        h = self.bn(x)
        if self.num_classes == 0:
            return h
        if y is None:
            raise ValueError("ConditionalBatchNorm2d: this layer is class-conditional and needs labels y")
        gain = self.gain(y)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(y)[:, :, None, None]  # (B, C, 1, 1)
        return gain * h + bias  # de Vries et al. 2017, eq. 2


def check_labels(name: str, num_classes: int, y: Optional[Tensor], batch_size: int) -> None:
    """Raise ValueError unless y fits the network: None when unconditional, (B,) int64 otherwise.

    Checks shape and dtype only: checking label values would sync the device every step, and
    ``nn.Embedding`` rejects labels outside [0, num_classes) itself.
    """
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"{name}: got class labels y but num_classes=0 (an unconditional network)")
        return
    if y is None or y.shape != (batch_size,) or y.dtype != torch.long:
        got = "None" if y is None else f"{y.dtype} {tuple(y.shape)}"
        raise ValueError(
            f"{name}: num_classes={num_classes}, so y must be ({batch_size},) int64 labels in "
            f"[0, {num_classes}), got {got}"
        )
