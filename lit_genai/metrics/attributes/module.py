"""``AttributeTraining``: the LightningModule that trains an ``AttributeClassifier`` under ``lit-genai fit``.

One cross-entropy per attribute head, summed (multi-task learning with equal weights), on the data's
ground-truth attributes (``lit_genai.data.CaptionedShapes``: batches ``(x, attrs, captions)``), with
random-shift augmentation as the domain ``Classifier`` has, and pixel noise and colour shifts: the
data's pictures are exact renderings of about a thousand attribute rows, and a classifier trained on
them alone reads a shape wrong under Gaussian noise of std 0.1 (13 of 255 levels) two times in three,
where generated pictures are never exact. ``experiments/eval/shapes_attributes.yaml``
trains the checkpoint that ``--evaluation.extractor`` takes for ``attr_acc``
(``lit_genai.metrics.attribute_accuracy``).

Shape legend: B batch, C channels, H/W spatial, A attributes, K_a values of attribute a. Images are
float in [-1, 1] (docs/architecture.md, "Batches").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.metrics.attributes.network import AttributeClassifier
from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.paradigm import check_net, optimizer_config


class AttributeTraining(LightningModule):
    """Train an ``AttributeClassifier`` with one cross-entropy per head, summed.

    Logs ``train/loss``, ``val/loss``, ``val/acc_<attribute>`` and ``val/acc`` (the mean over
    attributes), and the same under ``test/``.

    Args:
        net: The classifier, mapping (B, C, H, W) in [-1, 1] to {attribute: (B, K_a) logits}.
        sample_shape: (C, H, W) of one image; linked from the data module.
        attribute_names: The attributes of the data's ``attrs`` columns, in order; linked from the
            data module. The network needs one head per name.
        attribute_values: Attribute -> its value names (head K_a = their number); linked from the
            data module and kept in the checkpoint, so the extractor can check that data it scores
            lists the values in the same order.
        optimizer: Optimiser for the network's parameters.
        lr_scheduler: Optional LR scheduler, stepped once per epoch.
        max_shift: Training augmentation: translate each image by up to this many pixels in x and y,
            repeating the edge pixels (the background colour is an attribute: a constant fill would
            add a border of another colour). Keep it well under the distance between positions. 0 = off.
        noise_std: Training augmentation: add Gaussian noise whose std is drawn per image uniformly
            from [0, noise_std] (in the [-1, 1] units of the images). 0 = off.
        colour_shift: Training augmentation: add to each channel of each image an offset drawn
            uniformly from [-colour_shift, colour_shift] (a generator's colour drift). 0 = off.
    """

    modality = "image"
    ema_target = "net"
    num_classes = 0  # the second slot of its batches holds attributes, not class labels

    def __init__(
        self,
        net: AttributeClassifier,
        sample_shape: Sequence[int] = (3, 32, 32),
        attribute_names: Sequence[str] = ("shape", "colour", "size", "position", "background"),
        attribute_values: Optional[Mapping[str, Sequence[str]]] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        max_shift: int = 2,
        noise_std: float = 0.2,
        colour_shift: float = 0.1,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("net",), ignore=("optimizer", "lr_scheduler"))
        self.net = net
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.attribute_names = tuple(attribute_names)
        self.attribute_values = (
            {name: tuple(values) for name, values in attribute_values.items()} if attribute_values else None
        )
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.max_shift, self.noise_std, self.colour_shift = max_shift, noise_std, colour_shift
        check_net(net, "model.net", sample_shape=self.sample_shape)
        _check_heads(net.head_sizes, self.attribute_names, self.attribute_values)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) in [-1, 1] -> {attribute: (B, K_a) logits}."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor, Any], batch_idx: int) -> Tensor:
        x, attrs = batch[0], batch[1]  # (B, C, H, W), (B, A); batch[2] the captions, unused
        x = self._augment(x)
        loss = self._losses(self(x), attrs)["loss"]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return optimizer_config(self.optimizer(self.net.parameters()), self.lr_scheduler)

    def _augment(self, x: Tensor) -> Tensor:
        """Random shift, colour shift and pixel noise of training images (B, C, H, W) -> (B, C, H, W)."""
        B, C = x.shape[:2]
        if self.max_shift > 0:
            x = random_shift(x, self.max_shift, fill="edge")  # a coloured background, not black
        if self.colour_shift > 0:
            x = x + (torch.rand(B, C, 1, 1, device=x.device) * 2 - 1) * self.colour_shift
        if self.noise_std > 0:
            x = x + torch.randn_like(x) * torch.rand(B, 1, 1, 1, device=x.device) * self.noise_std
        return x.clamp(-1, 1)  # (B, C, H, W), in range as quantised samples are

    def _losses(self, logits: dict[str, Tensor], attrs: Tensor) -> dict[str, Tensor]:
        """Summed loss and per-attribute accuracies of logits {a: (B, K_a)} against attrs (B, A)."""
        out: dict[str, Tensor] = {}
        losses = []
        for column, name in enumerate(self.attribute_names):
            target = attrs[:, column]  # (B,)
            losses.append(F.cross_entropy(logits[name], target))
            out[f"acc_{name}"] = (logits[name].argmax(-1) == target).float().mean()
        out["loss"] = torch.stack(losses).sum()
        out["acc"] = torch.stack([out[f"acc_{name}"] for name in self.attribute_names]).mean()
        return out

    def _evaluate(self, batch: tuple[Tensor, Tensor, Any], stage: str) -> None:
        x, attrs = batch[0], batch[1]
        for key, value in self._losses(self(x), attrs).items():
            # batch means averaged over batches weighted by batch size: the accuracy over the split
            self.log(
                f"{stage}/{key}", value, prog_bar=key in ("loss", "acc"), sync_dist=True, batch_size=len(x)
            )


def _check_heads(
    heads: dict[str, int], names: Sequence[str], values: Optional[Mapping[str, Sequence[str]]]
) -> None:
    """One ``ConfigError`` line when the network's heads do not match the data's attributes."""
    wanted = {name: len(values[name]) for name in names} if values else None
    if wanted is not None and heads != wanted:
        raise ConfigError(
            f"model.net.init_args.heads={heads} but the data's attributes have {wanted} values: "
            f"set model.net.init_args.heads: {wanted}"
        )
    missing = [name for name in names if name not in heads]
    if missing:
        raise ConfigError(
            f"model.net.init_args.heads={heads} has no head for {missing} of the data's attributes "
            f"{list(names)}: add them with their numbers of values"
        )
