"""FID, KID, Inception Score and improved precision / recall as torchmetrics Metrics on features.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium" (Fréchet distance between Gaussians fitted to the two feature sets).
- KID: Bińkowski et al. 2018, "Demystifying MMD GANs" (unbiased MMD², cubic polynomial kernel, mean
  and std over random subsets).
- IS: Salimans et al. 2016, "Improved Techniques for Training GANs" (exp E[KL(p(y|x) || p(y))], mean
  ± std over 10 splits, as in the paper's code).
- Precision / recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models" (the maths: ``lit_genai.metrics.precision_recall``).

The wrappers take features (or logits) that ``lit_genai.metrics.quality.QualityMetrics`` has already
extracted, so the extractor runs once per batch rather than once per metric. On top of torchmetrics'
FID / KID / IS they record the sample counts the numbers came from (``num_real``, ``num_fake``, for
the ``Protocol``), refuse too few samples with a ``ConfigError``, clamp KID's subset size to the
samples available, report IS's population std, and make the DDP gather safe for ranks with a
different number of updates, or none.

Distributed (DDP): torchmetrics gathers the states of every rank inside ``compute()``, which is
therefore a collective call that every rank must make.

Shape legend: B batch, N real feature vectors, M generated feature vectors, D feature width, K classes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import FrechetInceptionDistance, InceptionScore, KernelInceptionDistance

from lit_genai.errors import ConfigError
from lit_genai.metrics.precision_recall import precision_recall

__all__ = ["FeatureFID", "FeatureIS", "FeatureKID", "FeaturePrecisionRecall"]


class _Passthrough(nn.Module):
    """The ``feature=`` module given to torchmetrics: ``QualityMetrics`` hands it features it has
    already extracted (B, D), so the extractor runs once per batch instead of once per metric, and
    no extractor weights end up inside the metric objects."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by FrechetInceptionDistance instead of a dummy forward

    def forward(self, features: Tensor) -> Tensor:
        return features


class _GatherSafe:
    """Mixin: before the DDP gather, pack each list state into exactly one (n, D) tensor (n may be 0).

    torchmetrics gathers a list state with ``dist_reduce_fx=None`` element by element, so ranks
    with a different number of ``update`` calls (or none) would issue mismatched collectives and
    hang; one tensor per rank gathers correctly (``gather_all_tensors`` pads uneven lengths).
    """

    _list_widths: dict[str, int]

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        for name, width in self._list_widths.items():
            parts = getattr(self, name)
            packed = torch.cat(parts) if parts else torch.zeros(0, width, device=self.device)  # (n, D)
            setattr(self, name, [packed])
        super()._sync_dist(*args, **kwargs)


def _rows(parts: Union[Tensor, list[Tensor]]) -> int:
    return parts.shape[0] if isinstance(parts, Tensor) else sum(p.shape[0] for p in parts)


def _require(metric: str, num_real: Optional[int], num_fake: int, least: int) -> None:
    if (num_real is not None and num_real < least) or num_fake < least:
        real = "" if num_real is None else f"{num_real} real and "
        raise ConfigError(
            f"{metric} needs at least {least} images on each side, got {real}{num_fake} generated: "
            "give real features (set_real_features / update_real) and more samples (update_fake)"
        )


class FeatureFID(FrechetInceptionDistance):
    """torchmetrics' FID on features (B, D): ``update(features, real=...)``; real statistics survive
    ``reset()``. ``compute()`` sets ``num_real`` / ``num_fake`` and needs at least 2 of each.

    Args:
        num_features: Feature width D.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(feature=_Passthrough(num_features), reset_real_features=False)
        self.orig_dtype = torch.float32  # set by update(); a rank without updates must still compute

    def compute(self) -> Tensor:  # runs on the gathered states
        self.num_real = int(self.real_features_num_samples)
        self.num_fake = int(self.fake_features_num_samples)
        _require("FID", self.num_real, self.num_fake, 2)
        return super().compute()


class FeatureKID(_GatherSafe, KernelInceptionDistance):
    """torchmetrics' KID on features (B, D): ``update(features, real=...)``; real features survive
    ``reset()``. ``compute()`` -> (mean, std); sets ``num_real`` / ``num_fake`` and ``subset_size``,
    the requested size clamped to the samples available.

    Args:
        num_features: Feature width D.
        subsets: Number of random subsets the mean and std are taken over.
        subset_size: Requested samples per subset (``requested_subset_size``).
    """

    def __init__(self, num_features: int, subsets: int, subset_size: int) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            super().__init__(
                feature=_Passthrough(num_features),
                subsets=subsets,
                subset_size=subset_size,
                reset_real_features=False,
            )
        self._list_widths = {"real_features": num_features, "fake_features": num_features}
        self.requested_subset_size = subset_size

    def compute(self) -> tuple[Tensor, Tensor]:  # runs on the gathered states
        self.num_real, self.num_fake = _rows(self.real_features), _rows(self.fake_features)
        _require("KID", self.num_real, self.num_fake, 2)
        # torchmetrics raises when a subset is larger than either set: use all samples instead and
        # report the size used (Protocol.kid_subset_size)
        self.subset_size = min(self.requested_subset_size, self.num_real, self.num_fake)
        return super().compute()


class FeatureIS(_GatherSafe, InceptionScore):
    """torchmetrics' Inception Score on logits (B, K): ``update(logits)``. ``compute()`` -> (mean,
    population std over the splits); sets ``num_fake`` and needs at least ``splits`` samples.

    Args:
        num_classes: Logit width K.
        splits: Splits of the generated samples for the mean ± std.
    """

    def __init__(self, num_classes: int, splits: int) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            super().__init__(feature=_Passthrough(num_classes), splits=splits)
        self._list_widths = {"features": num_classes}

    def compute(self) -> tuple[Tensor, Tensor]:  # runs on the gathered states
        self.num_fake = _rows(self.features)
        _require("IS", None, self.num_fake, self.splits)
        mean, std = super().compute()
        # torchmetrics gives the sample std (n - 1); Salimans et al.'s code and torch-fidelity report
        # the population std (numpy's default), as do the "IS 8.22 ± 0.05" numbers in papers
        n = math.ceil(self.num_fake / math.ceil(self.num_fake / self.splits))  # torch.chunk's split count
        return mean, std * math.sqrt((n - 1) / n)


class FeaturePrecisionRecall(_GatherSafe, Metric):
    """``precision_recall`` as a torchmetrics Metric, so DDP gathers its features like the others':
    ``update(features, real=...)``; real features survive ``reset()``. ``compute()`` -> (precision,
    recall); sets ``num_real`` / ``num_fake`` and needs more than k of each.

    Args:
        num_features: Feature width D.
        k: Neighbour count of the k-NN radii.
    """

    full_state_update = False

    def __init__(self, num_features: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("real_features", [], dist_reduce_fx=None)
        self.add_state("fake_features", [], dist_reduce_fx=None)
        self._list_widths = {"real_features": num_features, "fake_features": num_features}

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features)

    def compute(self) -> tuple[Tensor, Tensor]:  # runs on the gathered states
        self.num_real, self.num_fake = _rows(self.real_features), _rows(self.fake_features)
        _require("precision/recall", self.num_real, self.num_fake, self.k + 1)
        real, fake = torch.cat(self.real_features), torch.cat(self.fake_features)
        return tuple(torch.tensor(v) for v in precision_recall(real, fake, self.k))

    def reset(self) -> None:
        real = list(self.real_features)  # real features survive, as reset_real_features=False does
        super().reset()  # (empties the list objects in place)
        self.real_features = real
