"""``DomainClassifier``: the small CNN that classifies the data's own domain (features and logits).

A VGG-style stack (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition": 3x3 conv blocks, max-pooling between stages) with batch normalisation (Ioffe & Szegedy
2015), sized for 28x28 digits. Its penultimate activations are the features of the domain extractor
(``lit_genai.metrics.features.DomainFeatures``); ``lit_genai.metrics.classifier.cas`` trains it for
the Classification Accuracy Score.

Shape legend: B batch, C channels, H/W spatial, D feature width (``feature_dim``), K classes.
Images are float in [-1, 1] (docs/architecture.md, "Batches").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # the BN shift is the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DomainClassifier(nn.Module):
    """VGG-style CNN: two stages of two 3x3 conv-BN-ReLU blocks and a 2x2 max-pool, then two linears.

    About 100k parameters (400 kB in float32) at the defaults. An adaptive 2x2 average pool before
    the linears makes it run on any image of at least 4x4 pixels (8x8 digits, 28x28 MNIST, 32x32
    CIFAR), but features are only meaningful at the resolution it was trained on.

    Args:
        in_channels: Image channels C (1 grey, 3 RGB).
        num_classes: Number of classes K.
        width: Channels of the first stage; the second has twice as many.
        feature_dim: Width D of the penultimate layer, i.e. of ``features(x)``.
        dropout: Dropout on the penultimate features during training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.feature_dim = width, feature_dim
        self.body = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            nn.AdaptiveAvgPool2d(2),  # (B, 2w, 2, 2)
            nn.Flatten(),  # (B, 8w)
        )
        self.fc = nn.Linear(8 * width, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, D) penultimate activations (after the ReLU)."""
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, K) logits."""
        return self.head(self.dropout(self.features(x)))

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor]) -> DomainClassifier:
        """Build the network whose sizes the state dict implies, and load it (strict)."""
        try:
            width, in_channels = state_dict["body.0.0.weight"].shape[:2]
            feature_dim = state_dict["fc.weight"].shape[0]
            num_classes = state_dict["head.weight"].shape[0]
        except KeyError as err:
            raise ConfigError(
                f"not a DomainClassifier state dict: key {err} missing (keys: {list(state_dict)[:4]}...)"
            ) from None
        net = cls(int(in_channels), int(num_classes), int(width), int(feature_dim))
        net.load_state_dict(state_dict)
        return net
