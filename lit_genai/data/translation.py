"""Image-to-image data: paired and unpaired batches, and three offline tasks from bundled digits.

Batches (docs/architecture.md, "Batches"):

- paired (``PairedImages``): ``(source, target, label)``, source (B, Cs, H, W) and target
  (B, C, H, W) float32 in [-1, 1], label int64 (B,) (the digit; zeros for unlabelled folders).
- unpaired (``UnpairedImages``): ``(a, b, label_a, label_b)``, a (B, Ca, H, W) of domain A and b
  (B, Cb, H, W) of domain B, not corresponding; labels int64 (B,). Training item i pairs
  a[i mod N_A] with b[perm(i) mod N_B] (a fixed seeded permutation) over max(N_A, N_B) items; the
  losses of CycleGAN treat the two images of an item independently, so a fixed pairing loses
  nothing. Validation and test items pair a[i] with b[i] over min(N_A, N_B) items (give both
  domains equal held-out sizes, or the larger one is cut).

The source is the model's ``image`` condition (``conditions``: ``("image", "label")``); ``sample_shape``
is the target's (C, H, W) and ``source_shape`` the source's (Cs, H, W), both linked into the model.

Offline tasks:

- ``EdgesToDigits``: the Sobel edges of MNIST-5k digits -> the digits (paired; edges2shoes in
  miniature). Edge map: the gradient magnitude of the Sobel filters, normalised by its maximum per
  image and thresholded at ``threshold``: a binary outline of each stroke.
- ``ColouredDigits``: grey MNIST-5k digits -> the same digit in white on a coloured background
  (paired; RGB). The background colour is the controlled attribute: ``colour: label`` paints digit
  k on ``PALETTE[k]`` (the network must read the digit to choose it), ``colour: random`` draws it
  from the palette by a seeded generator (the source does not tell it: a model can only learn the
  average, an ablation).
- ``DigitsToMNIST``: UCI 8x8 digits (scikit-learn's ``load_digits``, upsampled bicubically to 20x20
  and padded to 28x28 like MNIST's centred 20x20 box) <-> MNIST-5k digits (unpaired).

Shape legend: B batch, N images of a set, C/H/W image, Cs source channels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lit_genai.data.checks import check_counts
from lit_genai.data.images import ImageDataModule, MNIST5k
from lit_genai.errors import ConfigError

# Ten distinguishable background colours (RGB in [0, 1]), one per digit for colour: label.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.80, 0.10, 0.10),
    (0.10, 0.55, 0.10),
    (0.10, 0.20, 0.80),
    (0.85, 0.65, 0.05),
    (0.55, 0.10, 0.60),
    (0.05, 0.60, 0.65),
    (0.90, 0.40, 0.05),
    (0.45, 0.30, 0.15),
    (0.45, 0.45, 0.45),
    (0.85, 0.25, 0.55),
)


def sobel_edges(x: Tensor, threshold: float = 0.25) -> Tensor:
    """Binary edge maps of grey images: (N, 1, H, W) in [-1, 1] -> (N, 1, H, W) in {-1, 1}.

    The Sobel gradient magnitude, divided by its maximum per image, above ``threshold``: 1 (edge),
    else -1."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    unit = (x + 1) / 2  # (N, 1, H, W) in [0, 1]
    grad = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernels)  # (N, 2, H, W)
    magnitude = grad.pow(2).sum(1, keepdim=True).sqrt()  # (N, 1, H, W)
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-8)[:, None, None, None]  # (N, 1, 1, 1)
    return torch.where(magnitude / peak > threshold, 1.0, -1.0)


def on_background(x: Tensor, colours: Tensor) -> Tensor:
    """White digits on coloured backgrounds: (N, 1, H, W) grey in [-1, 1], (N, 3) RGB in [0, 1] ->
    (N, 3, H, W) in [-1, 1]; a pixel of ink m in [0, 1] is m * white + (1 - m) * colour."""
    ink = (x + 1) / 2  # (N, 1, H, W)
    rgb = ink + (1 - ink) * colours[:, :, None, None]  # (N, 3, H, W) in [0, 1]
    return rgb * 2 - 1


def uci_digits_28() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 UCI digits as MNIST-like images: (N, 1, 28, 28) in [-1, 1], (N,) labels.

    The 8x8 images (values 0-16) are upsampled bicubically to 20x20 and padded with background to
    28x28, as MNIST centres its digits in a 20x20 box."""
    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    # bicubic: sharper strokes than bilinear (the MNIST classifier reads 85.5% of them, 71% bilinear)
    x = F.interpolate(x, size=(20, 20), mode="bicubic", align_corners=False).clamp(0, 1)  # (N, 1, 20, 20)
    x = F.pad(x, (4, 4, 4, 4))  # (N, 1, 28, 28)
    return x * 2 - 1, torch.from_numpy(digits.target).long()


class PairedImages(ImageDataModule):
    """Base of paired data: subclasses call ``_set_pairs(source, target, labels, test_size)``."""

    conditions = ("image", "label")
    source_shape: tuple[int, int, int]

    def _set_pairs(self, source: Tensor, target: Tensor, labels: Tensor, test_size: int) -> None:
        train, val, test = self._split(len(source), test_size)
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(source[i], target[i], labels[i]) for i in (train, val, test)
        )


class UnpairedItems(Dataset):
    """Items (a, b, label_a, label_b) of two unpaired sets (the module docstring's pairing rule)."""

    def __init__(self, a: TensorDataset, b: TensorDataset, training: bool, seed: int) -> None:
        self.a, self.b, self.training = a, b, training
        n_b = len(b)
        self.order = torch.randperm(n_b, generator=torch.Generator().manual_seed(seed))  # (N_B,)

    def __len__(self) -> int:
        return max(len(self.a), len(self.b)) if self.training else min(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_a, y_a = self.a[i % len(self.a)]
        x_b, y_b = self.b[int(self.order[i % len(self.b)]) if self.training else i]
        return x_a, x_b, y_a, y_b


class UnpairedImages(ImageDataModule):
    """Base of unpaired data: subclasses call ``_set_domains((a, labels_a), (b, labels_b), test_sizes)``."""

    conditions = ("image", "label")
    source_shape: tuple[int, int, int]

    def _set_domains(
        self,
        a: tuple[Tensor, Tensor],
        b: tuple[Tensor, Tensor],
        test_sizes: tuple[int, int],
        val_sizes: tuple[int, int],
    ) -> None:
        sets: list[list[TensorDataset]] = []
        for k, ((x, y), test_size, val_size) in enumerate(zip((a, b), test_sizes, val_sizes, strict=True)):
            if val_size + test_size >= len(x):
                raise ConfigError(
                    f"{type(self).__name__}: val_size={val_size} and test_size={test_size} leave no training "
                    f"images of the {len(x)} of domain {'AB'[k]}; lower them"
                )
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + k))
            val, test, train = perm.split([val_size, test_size, len(x) - val_size - test_size])
            sets.append([TensorDataset(x[i], y[i]) for i in (train, val, test)])
        (train_a, val_a, test_a), (train_b, val_b, test_b) = sets
        self.train_set = UnpairedItems(train_a, train_b, True, self.seed)
        self.val_set = UnpairedItems(val_a, val_b, False, self.seed)
        self.test_set = UnpairedItems(test_a, test_b, False, self.seed)


def _mnist5k(seed: int) -> tuple[Tensor, Tensor]:
    """All 5000 MNIST-5k digits (N, 1, 28, 28) in [-1, 1] and labels (N,), through ``MNIST5k``."""
    data = MNIST5k(val_size=1, test_size=1, seed=seed)
    data.setup()
    parts = [data.train_set.tensors, data.val_set.tensors, data.test_set.tensors]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class EdgesToDigits(PairedImages):
    """Sobel edges of MNIST-5k digits -> the digits (paired, offline; module docstring).

    Args:
        threshold: Edge threshold on the normalised gradient magnitude (0-1).
        val_size: Validation pairs (default 500).
        test_size: Test pairs (default 500); the rest of the 5000 train.
        seed: Seed of the split.
        batch_size: Pairs per batch.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    feature_extractor = "mnist"

    def __init__(
        self,
        threshold: float = 0.25,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size, seed, False, predict_samples)
        check_counts(type(self).__name__, test_size=test_size)
        if not 0 < threshold < 1:
            raise ConfigError(f"data.threshold={threshold} must be in (0, 1)")
        self.threshold, self.test_size = threshold, test_size
        self.sample_shape = self.source_shape = (1, 28, 28)
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            x, y = _mnist5k(0)  # (N, 1, 28, 28), (N,): the bundled order; the split is ours
            self._set_pairs(sobel_edges(x, self.threshold), x, y, self.test_size)


class ColouredDigits(PairedImages):
    """Grey MNIST-5k digits -> white digits on a coloured background (paired, RGB, offline).

    Args:
        colour: ``label``: digit k on ``PALETTE[k]``; ``random``: a palette colour drawn per image
            from ``seed`` (module docstring).
        val_size: Validation pairs (default 500).
        test_size: Test pairs (default 500); the rest of the 5000 train.
        seed: Seed of the split and of the random colours.
        batch_size: Pairs per batch.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        colour: Literal["label", "random"] = "label",
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers, val_size, seed, False, predict_samples)
        check_counts(type(self).__name__, test_size=test_size)
        if colour not in ("label", "random"):
            raise ConfigError(f"data.colour={colour!r}: choose 'label' or 'random'")
        self.colour, self.test_size = colour, test_size
        self.source_shape = (1, 28, 28)
        self.sample_shape = (3, 28, 28)
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            x, y = _mnist5k(0)
            palette = torch.tensor(PALETTE)  # (10, 3)
            if self.colour == "label":
                index = y
            else:
                index = torch.randint(
                    0, len(PALETTE), (len(y),), generator=torch.Generator().manual_seed(self.seed)
                )
            self._set_pairs(x, on_background(x, palette[index]), y, self.test_size)


class DigitsToMNIST(UnpairedImages):
    """UCI 8x8 digits upsampled to 28x28 (domain A) <-> MNIST-5k digits (domain B), unpaired, offline.

    Args:
        val_size_a: Held-out UCI digits for validation (of 1797).
        test_size_a: Held-out UCI digits for test.
        val_size_b: Held-out MNIST-5k digits for validation (of 5000).
        test_size_b: Held-out MNIST-5k digits for test.
        seed: Seed of the splits and of the training pairing.
        batch_size: Items (a, b) per batch.
        num_workers: DataLoader worker processes.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    feature_extractor = "mnist"

    def __init__(
        self,
        val_size_a: int = 200,
        test_size_a: int = 300,
        val_size_b: int = 200,
        test_size_b: int = 300,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__(batch_size, num_workers, 0, seed, False, predict_samples)
        for val_size, test_size in ((val_size_a, test_size_a), (val_size_b, test_size_b)):
            check_counts(type(self).__name__, val_size=val_size, test_size=test_size)
        self.val_size_a, self.test_size_a = val_size_a, test_size_a
        self.val_size_b, self.test_size_b = val_size_b, test_size_b
        self.sample_shape = self.source_shape = (1, 28, 28)
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._set_domains(
                uci_digits_28(),
                _mnist5k(0),
                (self.test_size_a, self.test_size_b),
                (self.val_size_a, self.val_size_b),
            )
