"""``Classifier``: the LightningModule that trains an image classifier under ``lit-genai fit``.

Cross-entropy training of a network such as ``DomainClassifier``
(``experiments/eval/mnist_classifier.yaml``), with random-shift augmentation and, optionally,
adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks": each batch is replaced by PGD examples, ``lit_genai.adversarial.attacks.pgd``). Its
checkpoints become the shipped extractor weights through ``lit_genai.metrics.classifier.export``.

Shape legend: B batch, C channels, H/W spatial, K classes. Images are float in [-1, 1]
(docs/architecture.md, "Batches").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lit_genai.adversarial.attacks import pgd
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.paradigm import check_net, optimizer_config, this_rank


class Classifier(LightningModule):
    """Train an image classifier with cross-entropy; logs ``train/loss``, ``val/loss``, ``val/acc``,
    ``test/loss`` and ``test/acc``.

    Args:
        net: The classifier, mapping (B, C, H, W) in [-1, 1] to (B, K) logits, e.g.
            ``lit_genai.metrics.classifier.DomainClassifier``.
        sample_shape: (C, H, W) of one image; linked from the data module.
        num_classes: Number of classes K; linked from the data module, must match the network's.
        optimizer: Optimiser for the network's parameters.
        lr_scheduler: Optional LR scheduler, stepped once per epoch (e.g. ``CosineAnnealingLR`` with
            ``T_max`` = the number of epochs).
        max_shift: Training augmentation: translate each image by up to this many pixels in x and y
            (background-filled), as in the classic MNIST recipes. 0 turns it off.
        adversarial_eps: Adversarial training (Madry et al. 2018, the saddle-point problem of
            Section 2): each training batch, after the random shift, is replaced by PGD examples that
            maximise the cross-entropy within this radius, in the units of the [-1, 1] images (MNIST's
            eps 0.3 in [0, 1] units is 0.6 here). 0 turns it off.
        adversarial_norm: Ball of the attack: ``"linf"`` or ``"l2"`` (per example).
        adversarial_steps: PGD steps per training batch.
        adversarial_step_size: PGD step length; None = 2.5 * adversarial_eps / adversarial_steps.
    """

    modality = "image"
    ema_target = "net"

    def __init__(
        self,
        net: nn.Module,
        sample_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        max_shift: int = 2,
        adversarial_eps: float = 0.0,
        adversarial_norm: Literal["linf", "l2"] = "linf",
        adversarial_steps: int = 7,
        adversarial_step_size: Optional[float] = None,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("net",), ignore=("optimizer", "lr_scheduler"))
        self.net = net
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = num_classes
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.max_shift = max_shift
        if adversarial_eps < 0 or adversarial_steps < 1:
            raise ConfigError(
                f"model.adversarial_eps={adversarial_eps}, model.adversarial_steps={adversarial_steps}: "
                "the radius must be >= 0 (0 = off) and the PGD steps >= 1"
            )
        self.adversarial_eps, self.adversarial_norm = adversarial_eps, adversarial_norm
        self.adversarial_steps, self.adversarial_step_size = adversarial_steps, adversarial_step_size
        check_net(
            net, "model.net", sample_shape=self.sample_shape, num_classes=num_classes, classes="required"
        )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, K) logits."""
        return self.net(x)

    def per_example_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of each example: x (B, C, H, W) in [-1, 1], y (B,) -> (B,); differentiable in x."""
        return F.cross_entropy(self(x), y, reduction="none")

    def adversarial_examples(self, x: Tensor, y: Tensor) -> Tensor:
        """PGD examples on the cross-entropy within ``adversarial_eps`` of x (B, C, H, W) -> (B, C, H, W).

        Attacks the network in its current mode (in training: batch statistics and dropout, the function
        the loss then sees, as in Madry et al. 2018). The random start comes from a generator seeded by
        this rank's share of one draw for the world (``paradigm.this_rank``): ranks start differently
        while their RNG streams stay in step.
        """
        seed = this_rank(lambda n: torch.randint(0, 2**62, (n,)), 1, self._trainer)  # (1,)
        generator = torch.Generator(device=x.device).manual_seed(int(seed[0]))
        return pgd(
            lambda v: self.per_example_loss(v, y),
            x,
            self.adversarial_eps,
            norm=self.adversarial_norm,
            steps=self.adversarial_steps,
            step_size=self.adversarial_step_size,
            generator=generator,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch  # (B, C, H, W), (B,)
        if self.max_shift > 0:
            x = random_shift(x, self.max_shift)
        if self.adversarial_eps > 0:
            x = self.adversarial_examples(x, y)  # (B, C, H, W), within adversarial_eps of x
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)  # (B, K)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)  # (B, K)
        self.test_acc(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self):
        return optimizer_config(self.optimizer(self.net.parameters()), self.lr_scheduler)
