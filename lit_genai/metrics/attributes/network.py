"""``AttributeClassifier``: a small CNN with one linear head per attribute (shape, colour, size, ...).

The same VGG-style trunk as ``lit_genai.metrics.classifier.network.DomainClassifier`` (Simonyan &
Zisserman 2015: 3x3 conv blocks, max-pooling between stages, batch normalisation after Ioffe &
Szegedy 2015), with a third stage and a 4x4 spatial grid before the linears instead of 2x2: where a
shape sits (a quadrant, or the centre) is itself an attribute, so the features must keep it. Its
penultimate activations are the features of ``lit_genai.metrics.features.AttributeFeatures``; its
heads score whether a generated image shows what its caption asked (``attr_acc``).

Shape legend: B batch, C channels, H/W spatial, D feature width (``feature_dim``), K_a values of
attribute a. Images are float in [-1, 1] (docs/architecture.md, "Batches").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.metrics.classifier.network import _conv_block


class AttributeClassifier(nn.Module):
    """Three stages of ``blocks`` 3x3 conv-BN-ReLU blocks, with a 2x2 max-pool after the first two, a
    4x4 average pool, a linear to D features, and one linear head per attribute.

    About 0.16M parameters and 3M multiply-adds per 32x32 image at the defaults (the pictures are flat
    colours at fixed places: a small network reads them, and trains in minutes on a CPU). Runs on any
    image of at least 8x8 pixels, but features and heads are only meaningful at the resolution it was
    trained on.

    Args:
        in_channels: Image channels C (3 for RGB).
        heads: Attribute name -> number of values K_a, in the data's ``attribute_names`` order (e.g.
            ``{shape: 4, colour: 6, size: 2, position: 5, background: 6}`` for ``CaptionedShapes``).
        width: Channels of the first stage; the second has 2x, the third 4x as many.
        blocks: Conv blocks per stage.
        feature_dim: Width D of the penultimate layer, i.e. of ``features(x)``.
        dropout: Dropout on the penultimate features during training.
    """

    def __init__(
        self,
        in_channels: int = 3,
        heads: Mapping[str, int] = {"shape": 4, "colour": 6, "size": 2, "position": 5, "background": 6},  # noqa: B006
        width: int = 16,
        blocks: int = 1,
        feature_dim: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not heads or any(int(k) < 2 for k in heads.values()):
            raise ConfigError(
                f"model.net.init_args.heads={dict(heads)}: give every attribute of the data with its "
                "number of values (at least 2)"
            )
        self.in_channels, self.width, self.blocks, self.feature_dim = in_channels, width, blocks, feature_dim
        widths = [in_channels] + [w for w in (width, 2 * width, 4 * width) for _ in range(blocks)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(_conv_block(c_in, c_out))
            if (i + 1) % blocks == 0 and i + 1 < 3 * blocks:
                layers.append(nn.MaxPool2d(2))  # (B, w, H/2, W/2) after stage 1, (B, 2w, H/4, W/4) after 2
        self.body = nn.Sequential(
            *layers,  # (B, 4w, H/4, W/4)
            nn.AdaptiveAvgPool2d(4),  # (B, 4w, 4, 4): a coarse map of where things are
            nn.Flatten(),  # (B, 64w)
        )
        self.fc = nn.Linear(64 * width, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, int(k)) for name, k in heads.items()})

    @property
    def head_sizes(self) -> dict[str, int]:
        """Attribute name -> number of values K_a, in head order (the ``heads`` init argument)."""
        return {name: head.out_features for name, head in self.heads.items()}

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, D) penultimate activations (after the ReLU)."""
        return F.relu(self.fc(self.body(x)))

    def classify(self, features: Tensor) -> dict[str, Tensor]:
        """(B, D) features -> {attribute: (B, K_a) logits}, without dropout (``forward``'s heads in eval)."""
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) in [-1, 1] -> {attribute: (B, K_a) logits}."""
        return self.classify(self.dropout(self.features(x)))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> AttributeClassifier:
        """Build the network whose sizes the state dict implies (heads in the stored order), and load it."""
        try:
            width, in_channels = state_dict["body.0.0.weight"].shape[:2]
            feature_dim = state_dict["fc.weight"].shape[0]
            convs = sum(
                1 for key, value in state_dict.items() if key.endswith(".0.weight") and value.ndim == 4
            )
        except KeyError as err:
            raise ConfigError(
                f"not an AttributeClassifier state dict: key {err} missing (keys: {list(state_dict)[:4]}...)"
            ) from None
        heads = {
            key.removeprefix("heads.").removesuffix(".weight"): int(value.shape[0])
            for key, value in state_dict.items()
            if key.startswith("heads.") and key.endswith(".weight")
        }
        net = cls(int(in_channels), heads, int(width), convs // 3, int(feature_dim))
        net.load_state_dict(state_dict)
        return net


def is_attribute_state(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a (``net.``-stripped) state dict is an ``AttributeClassifier``'s: has attribute heads."""
    return any(key.startswith("heads.") for key in state_dict)
