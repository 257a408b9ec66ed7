"""A small CNN that classifies the data's own domain: features for metrics, and a CAS trainer.

Two uses in the evaluation protocol:

- **Domain features.** ImageNet's Inception judges 28x28 grey digits after upsampling them to
  299x299 RGB, far from anything it was trained on. A classifier trained on the domain gives
  features (penultimate layer) and logits for FID / KID / IS / precision-recall that track digit
  quality; ``lit_genai.metrics.features.DomainFeatures`` wraps it. Such numbers are comparable only
  with numbers from the same weights, hence the extractor name in every metric key (``fid_mnist``).
- **Classification Accuracy Score** (Ravuri & Vinyals 2019, "Classification Accuracy Score for
  Conditional Generative Models"): train a classifier on generated images with their conditioning
  labels, report its accuracy on real test images. ``train_classifier`` + ``accuracy`` are that
  recipe as a plain, fast PyTorch loop.

``Classifier`` trains the network under ``lit-genai fit`` (``experiments/eval/mnist_classifier.yaml``);
``python -m lit_genai.metrics.classifier export CKPT OUT`` turns its checkpoint into the float32
state dict shipped in ``lit_genai/metrics/weights/``.

Shape legend: B batch, C channels, H/W spatial, D feature width (``feature_dim``), K classes.
Images are float in [-1, 1] (docs/architecture.md, "Batches"); uint8 images in [0, 255] are accepted by
``train_classifier`` and ``accuracy`` and mapped to [-1, 1] first.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lit_genai.errors import ConfigError, DataNotFoundError, LitGenAIError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.paradigm import check_net, eval_mode, this_rank
from lit_genai.robustness import pgd


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
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
        adversarial_eps: Adversarial training (Madry et al. 2018, "Towards Deep Learning Models
            Resistant to Adversarial Attacks", the saddle-point problem of Section 2): each training
            batch, after the random shift, is replaced by PGD examples that maximise the
            cross-entropy within this radius, in the units of the [-1, 1] images (MNIST's eps 0.3 in
            [0, 1] units is 0.6 here). 0 turns it off.
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
        optimizer = self.optimizer(self.net.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}


def random_shift(x: Tensor, max_shift: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Translate each image by its own integer offset in [-max_shift, max_shift]^2, filling with -1.

    (B, C, H, W) -> (B, C, H, W). ``generator`` (on the CPU) makes the offsets reproducible.
    """
    B, C, H, W = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=-1.0)  # (B, C, H + 2s, W + 2s), background is -1
    dy, dx = torch.randint(0, 2 * s + 1, (2, B, 1), generator=generator).to(x.device)  # (B, 1) each
    rows = dy + torch.arange(H, device=x.device)  # (B, H)
    cols = dx + torch.arange(W, device=x.device)  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    channel = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def _as_float_images(x: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float in [-1, 1]; float images pass through."""
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


def train_classifier(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 2e-3,
    max_shift: int = 2,
    width: int = 32,
    feature_dim: int = 128,
    seed: int = 0,
) -> DomainClassifier:
    """Train a ``DomainClassifier`` on (x, y) with Adam and a cosine LR decay; return it in eval mode.

    The training half of the Classification Accuracy Score (Ravuri & Vinyals 2019): ``x`` are
    generated images (N, C, H, W), float in [-1, 1] or uint8, ``y`` (N,) the labels they were
    generated for. Trains on ``x``'s device; the global RNG is left as it was (``seed`` fixes the
    initialisation, shuffling and augmentation).
    """
    x, y = _as_float_images(x), y.long().to(x.device)
    n = x.shape[0]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        net = DomainClassifier(x.shape[1], num_classes, width, feature_dim).to(x.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        total_steps = epochs * math.ceil(n / batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
        net.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)  # (N,)
            for index in order.split(batch_size):
                xb = x[index]  # (B, C, H, W)
                if max_shift > 0:
                    xb = random_shift(xb, max_shift, generator)
                loss = F.cross_entropy(net(xb), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Fraction of (x, y) that ``net`` classifies correctly; x (N, C, H, W) in [-1, 1] or uint8, y (N,).

    The test half of the Classification Accuracy Score: ``x`` are real held-out images.
    """
    with eval_mode(net):
        correct = sum(
            (net(_as_float_images(xb)).argmax(-1) == yb.to(xb.device)).sum().item()
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
        )
    return correct / max(len(y), 1)


# ---------------------------------------------------------------------- weights files


def load_classifier_state(path: Union[str, Path]) -> tuple[dict[str, Tensor], Optional[tuple[int, ...]]]:
    """Read a ``DomainClassifier`` state dict from ``path``: a plain state dict, or a ``lit-genai fit``
    checkpoint of ``Classifier`` (its EMA weights when the EMA callback was on).

    Returns the float32 state dict and the (C, H, W) the network was trained on (None when the file
    does not say). Loads with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"classifier weights {str(path)!r} not found")
    try:
        data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, unsafe pickle
        raise ConfigError(f"cannot read classifier weights {str(path)!r}: {err}".splitlines()[0]) from err
    sample_shape = None
    if "state_dict" in data:  # a Lightning checkpoint of Classifier
        sample_shape = data.get("hyper_parameters", {}).get("sample_shape")
        shadow = data.get("callbacks", {}).get("EMA", {}).get("shadow")
        if shadow:
            state = {k.removeprefix("net."): v for k, v in shadow.items()}
        else:
            state = {k.removeprefix("net."): v for k, v in data["state_dict"].items() if k.startswith("net.")}
    else:
        state = data
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, tuple(int(s) for s in sample_shape) if sample_shape is not None else None


def export_weights(checkpoint: Union[str, Path], out: Union[str, Path]) -> Path:
    """Write the network of a ``Classifier`` checkpoint as a float32 state dict (what ships in
    ``lit_genai/metrics/weights/``); returns ``out``. The network must load into ``DomainClassifier``."""
    state, _ = load_classifier_state(checkpoint)
    DomainClassifier.from_state_dict(state)  # refuse to write something the extractor cannot load
    buffer = io.BytesIO()
    torch.save(state, buffer)  # via a buffer: the archive's inner folder name, hence the bytes, do not
    out = Path(out)  # depend on the output path, so a re-export reproduces the shipped file exactly
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)  # never leave a half-written weights file behind
    return out


def main(args: Optional[list[str]] = None) -> None:
    """``python -m lit_genai.metrics.classifier export CKPT OUT``."""
    parser = argparse.ArgumentParser(prog="python -m lit_genai.metrics.classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="checkpoint of Classifier -> float32 state dict of its net")
    export.add_argument("checkpoint")
    export.add_argument("out")
    parsed = parser.parse_args(args)
    try:
        out = export_weights(parsed.checkpoint, parsed.out)
    except LitGenAIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
