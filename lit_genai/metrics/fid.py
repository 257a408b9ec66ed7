"""Sample quality against real data: FID, KID, Inception Score, improved precision / recall and
conditioning accuracy, with the ``Protocol`` they were measured under.

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium" (Fréchet distance between Gaussians fitted to the two feature sets).
- KID: Bińkowski et al. 2018, "Demystifying MMD GANs" (unbiased MMD², cubic polynomial kernel, mean
  and std over random subsets).
- IS: Salimans et al. 2016, "Improved Techniques for Training GANs" (exp E[KL(p(y|x) || p(y))], mean
  ± std over 10 splits, as in the paper's code).
- Precision / recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models" (the maths: ``lit_genai.metrics.precision_recall``).
- Conditioning accuracy of a class-conditional model: the share of samples the extractor's
  classifier assigns to the class they were drawn for (``lit_genai.metrics.conditioning``).

This file holds the torchmetrics wrappers and ``QualityMetrics``, which feeds them features that it
extracts once per batch with a ``lit_genai.metrics.features.FeatureExtractor`` (name, num_features,
num_classes, ``forward(uint8 images) -> features``, ``logits(uint8 images) -> logits``). The cached
real features come from ``lit_genai.metrics.cache.real_features``; that function, the
precision / recall functions and ``to_uint8`` are importable from here too.

Numbers from different extractors are not comparable, so the extractor's name is part of every key
(``fid_mnist``, ``fid_inception``; docs/architecture.md). Generated images are quantised to uint8
exactly as real images are (``to_uint8``) before the extractor sees them. ``Protocol`` records what a
number was measured on (sample counts, reference split, extractor, KID subset size after clamping,
sampler settings), because FID moves by several points with each of them.

Distributed (DDP): torchmetrics gathers the states of every rank inside ``compute()``, which is
therefore a collective call: every rank must call ``compute()`` (and ``set_real_features`` with the
same full set of real features, which each rank shards); ``update_fake`` is optional on a rank with
no images, and ``update_fake`` with zero images is allowed.

Shape legend: B batch, C channels, H/W spatial, N real feature vectors, M generated feature vectors,
D feature width, K classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import FrechetInceptionDistance, InceptionScore, KernelInceptionDistance

from lit_genai.media import to_uint8
from lit_genai.errors import ConfigError
from lit_genai.metrics.cache import default_cache_dir, real_features
from lit_genai.metrics.conditioning import ConditionalAccuracy
from lit_genai.metrics.precision_recall import covered, knn_radii, precision_recall

__all__ = [
    "METRICS",
    "ConditionalAccuracy",
    "MetricName",
    "Protocol",
    "QualityMetrics",
    "covered",
    "default_cache_dir",
    "knn_radii",
    "precision_recall",
    "real_features",
    "to_uint8",
]

MetricName = Literal["fid", "kid", "is", "pr"]
METRICS: tuple[MetricName, ...] = ("fid", "kid", "is", "pr")


# ---------------------------------------------------------------------- torchmetrics plumbing


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


class _FID(FrechetInceptionDistance):
    def __init__(self, num_features: int) -> None:
        super().__init__(feature=_Passthrough(num_features), reset_real_features=False)
        self.orig_dtype = torch.float32  # set by update(); a rank without updates must still compute

    def compute(self) -> Tensor:  # runs on the gathered states
        self.num_real = int(self.real_features_num_samples)
        self.num_fake = int(self.fake_features_num_samples)
        _require("FID", self.num_real, self.num_fake, 2)
        return super().compute()


class _KID(_GatherSafe, KernelInceptionDistance):
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


class _IS(_GatherSafe, InceptionScore):
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


class _PrecisionRecall(_GatherSafe, Metric):
    """``precision_recall`` as a torchmetrics Metric, so DDP gathers its features like the others'."""

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


# ---------------------------------------------------------------------- the metric set


@dataclass
class Protocol:
    """What a set of quality numbers was measured on; log it with the config and save it with results.

    Args:
        num_generated: Generated images the numbers are computed from.
        num_real: Real images in the reference statistics.
        reference: Reference data and split, e.g. ``"MNIST5k/train"``; FID against train and test differ.
        extractor: Feature extractor name (the suffix of the metric keys).
        kid_subset_size: KID subset size actually used (after clamping to the sample counts); None
            without KID.
        is_splits: Splits the Inception Score's mean ± std is taken over; None without IS.
        pr_k: Neighbour count k of precision / recall; None without them.
        sampler: Free-form sampler settings (sampler, steps, guidance scale, EMA, seed, ...).
        notes: Departures from what was asked (clamped KID subsets, fewer real images than requested).
    """

    num_generated: int
    num_real: int
    reference: str
    extractor: str
    kid_subset_size: Optional[int] = None
    is_splits: Optional[int] = None
    pr_k: Optional[int] = None
    sampler: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A plain (JSON-ready) dict of the fields, for ``logger.log_hyperparams`` and results files."""
        return asdict(self)


class QualityMetrics(nn.Module):
    """FID, KID, IS, precision / recall and conditioning accuracy of generated images with one
    feature extractor.

    Real statistics come from ``set_real_features`` (cached features, see ``real_features``) or
    ``update_real``; generated images from ``update_fake`` (with the labels they were drawn for when
    ``conditional``). ``compute()`` returns ``{"fid_<name>", "kid_<name>", "kid_<name>_std",
    "is_<name>", "is_<name>_std", "precision_<name>", "recall_<name>", "cond_acc_<name>"}`` (those
    asked for) as floats; the caller adds ``val/`` or ``test/``. ``reset_fake()`` clears the
    generated images and keeps the real statistics, for the next evaluation. The extractor runs once
    per batch (with IS or ``conditional``, through its ``features_and_logits`` when it has one, else
    ``forward`` and ``logits``), under ``torch.no_grad`` and in float32 even inside an autocast
    region.

    KID's and IS's random subsets are drawn from a generator seeded with ``seed``, so a compute()
    is reproducible and gives the same value on every rank.

    Under DDP, ``compute()`` gathers every rank's states: call it on every rank, and give every rank
    the same full set of real features in ``set_real_features`` (each keeps its share). A rank
    without generated images may skip ``update_fake`` or call it with zero images.

    Args:
        extractor: A ``lit_genai.metrics.features.FeatureExtractor`` (``name``, ``num_features``,
            ``num_classes``; ``forward`` and ``logits`` take uint8 (B, C, H, W) images).
        metrics: Which numbers to compute: ``"fid"``, ``"kid"``, ``"is"`` (needs an extractor with
            logits), ``"pr"`` (precision and recall).
        kid_subset_size: Samples per KID subset (Bińkowski et al. use 1000); clamped to the number of
            real and generated images, and ``protocol()`` reports the size used.
        kid_subsets: Number of random KID subsets the mean and std are taken over.
        is_splits: Splits of the generated images for the Inception Score's mean ± std.
        pr_k: Neighbour count k of precision / recall (Kynkäänniemi et al. use 3).
        seed: Seed of KID's subsets and IS's split permutation.
        conditional: Also compute ``cond_acc_<name>``, the share of generated images whose arg-max
            class logit is the label passed with them to ``update_fake`` (needs an extractor with
            logits, over the same classes as the generator's labels).
    """

    def __init__(
        self,
        extractor: nn.Module,
        metrics: Sequence[MetricName] = METRICS,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        pr_k: int = 3,
        seed: int = 0,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ConfigError(f"metrics={list(metrics)}: choose from {list(METRICS)} (at least one)")
        self.names = tuple(m for m in METRICS if m in metrics)
        name, width, classes = extractor.name, int(extractor.num_features), int(extractor.num_classes)
        if "is" in self.names and classes <= 0:
            raise ConfigError(f"the {name!r} extractor has no class logits: drop 'is' from metrics")
        if conditional and classes <= 0:
            raise ConfigError(f"the {name!r} extractor has no class logits: it cannot score conditioning")
        self.conditional = conditional
        self.extractor = extractor.eval().requires_grad_(False)
        self.seed = seed
        parts: dict[str, Metric] = {}
        if "fid" in self.names:
            parts["fid"] = _FID(width)
        if "kid" in self.names:
            parts["kid"] = _KID(width, kid_subsets, kid_subset_size)
        if "is" in self.names:
            parts["is"] = _IS(classes, is_splits)
        if "pr" in self.names:
            parts["pr"] = _PrecisionRecall(width, pr_k)
        if conditional:
            parts["cond_acc"] = ConditionalAccuracy()
        self.parts = nn.ModuleDict(parts)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(device)
        self._counts: Optional[dict[str, Any]] = None

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def train(self, mode: bool = True) -> QualityMetrics:
        super().train(mode)
        self.extractor.eval()  # batch-norm statistics and dropout of the extractor never change
        return self

    @torch.no_grad()
    def update_real(self, images: Tensor) -> None:
        """Add real images, uint8 (B, C, H, W) in [0, 255], to the reference statistics."""
        self._update(self._extract(images, logits=False)[0], None, real=True)

    @torch.no_grad()
    def set_real_features(self, features: Tensor) -> None:
        """Replace the reference statistics with cached real features (N, D); also clears generated images.

        Fills FID's running sums (sum, sum of outer products, count), KID's and precision/recall's
        feature lists through the metrics' own ``update``. Under DDP pass the same full set on every
        rank: each keeps rows ``rank::world_size`` and ``compute()`` gathers them back once.
        """
        width = int(self.extractor.num_features)
        if features.ndim != 2 or features.shape[1] != width:
            raise ConfigError(
                f"real features of shape {tuple(features.shape)} do not fit the {self.extractor.name!r} "
                f"extractor (N, {width}); was the cache made with another extractor?"
            )
        if dist.is_available() and dist.is_initialized():
            features = features[dist.get_rank() :: dist.get_world_size()]  # (N / world, D)
        for part in self.parts.values():
            part.reset()
            if hasattr(part, "real_features") and isinstance(part.real_features, list):
                part.real_features = []  # reset() keeps real features by design; here they go too
        if "fid" in self.parts:
            fid = self.parts["fid"]
            fid.real_features_sum.zero_()
            fid.real_features_cov_sum.zero_()
            fid.real_features_num_samples.zero_()
        self._update(features.to(self.device, torch.float32), None, real=True)

    @torch.no_grad()
    def update_fake(self, images: Tensor, labels: Optional[Tensor] = None) -> None:
        """Add generated images, uint8 (B, C, H, W) in [0, 255] (``to_uint8`` of samples); B may be 0.

        ``labels`` (B,): the classes the images were generated for; needed when ``conditional``.
        """
        labels = self._labels(labels, images.shape[0])
        features, logits = self._extract(images, logits="is" in self.names or self.conditional)
        self._update(features, logits, real=False, labels=labels)

    @torch.no_grad()
    def update_fake_features(
        self, features: Tensor, logits: Optional[Tensor] = None, labels: Optional[Tensor] = None
    ) -> None:
        """Add already extracted generated features (B, D) and, for IS or ``conditional``, logits (B, K)
        (and, when ``conditional``, the labels (B,) they were generated for)."""
        if ("is" in self.names or self.conditional) and logits is None:
            raise ConfigError(
                "IS and conditioning accuracy need the generated images' logits: pass logits= or drop "
                "'is' from metrics"
            )
        labels = self._labels(labels, features.shape[0])
        logits = logits.to(self.device, torch.float32) if logits is not None else None
        self._update(features.to(self.device, torch.float32), logits, real=False, labels=labels)

    def compute(self) -> dict[str, float]:
        """The requested numbers as floats, keyed ``<metric>_<extractor>`` (docs/architecture.md).

        A collective call under DDP: every rank must call it and gets the same values.
        """
        name, out = self.extractor.name, {}
        with torch.random.fork_rng(devices=[]):  # KID subsets and IS splits use the CPU generator
            torch.manual_seed(self.seed)
            if "fid" in self.parts:
                out[f"fid_{name}"] = float(self.parts["fid"].compute())
            if "kid" in self.parts:
                mean, std = self.parts["kid"].compute()
                out[f"kid_{name}"], out[f"kid_{name}_std"] = float(mean), float(std)
            if "is" in self.parts:
                mean, std = self.parts["is"].compute()
                out[f"is_{name}"], out[f"is_{name}_std"] = float(mean), float(std)
            if "pr" in self.parts:
                precision, recall = self.parts["pr"].compute()
                out[f"precision_{name}"], out[f"recall_{name}"] = float(precision), float(recall)
            if "cond_acc" in self.parts:
                out[f"cond_acc_{name}"] = float(self.parts["cond_acc"].compute())
        parts = list(self.parts.values())
        kid = self.parts["kid"] if "kid" in self.parts else None
        self._counts = {
            "num_generated": max(p.num_fake for p in parts),
            "num_real": max((p.num_real for p in parts if hasattr(p, "num_real")), default=0),
            "kid_subset_size": kid.subset_size if kid is not None else None,
            "kid_requested": kid.requested_subset_size if kid is not None else None,
        }
        return out

    def reset_fake(self) -> None:
        """Forget the generated images; the real statistics stay for the next evaluation."""
        for part in self.parts.values():
            part.reset()

    def protocol(
        self,
        reference: str,
        sampler: Optional[dict[str, Any]] = None,
        num_real_requested: Optional[int] = None,
    ) -> Protocol:
        """The ``Protocol`` of the last ``compute()``.

        Args:
            reference: Reference data and split, e.g. ``"MNIST5k/train"``.
            sampler: Sampler settings to record with the numbers.
            num_real_requested: The ``num`` asked of ``real_features``; noted when fewer were available.
        """
        if self._counts is None:
            raise RuntimeError("QualityMetrics.protocol() reports the last compute(): call compute() first")
        counts, notes = self._counts, []
        if counts["kid_subset_size"] is not None and counts["kid_subset_size"] < counts["kid_requested"]:
            notes.append(
                f"KID subset size clamped from {counts['kid_requested']} to {counts['kid_subset_size']} "
                f"({counts['num_real']} real, {counts['num_generated']} generated images)"
            )
        if num_real_requested is not None and counts["num_real"] < num_real_requested:
            notes.append(f"{num_real_requested} real images requested, {counts['num_real']} available")
        return Protocol(
            num_generated=counts["num_generated"],
            num_real=counts["num_real"],
            reference=reference,
            extractor=self.extractor.name,
            kid_subset_size=counts["kid_subset_size"],
            is_splits=self.parts["is"].splits if "is" in self.parts else None,
            pr_k=self.parts["pr"].k if "pr" in self.parts else None,
            sampler=dict(sampler or {}),
            notes=notes,
        )

    def _extract(self, images: Tensor, logits: bool) -> tuple[Tensor, Optional[Tensor]]:
        """uint8 (B, C, H, W) -> float32 features (B, D) and, if asked, logits (B, K)."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ConfigError(
                f"QualityMetrics takes uint8 images (B, C, H, W) in [0, 255], got {images.dtype} of shape "
                f"{tuple(images.shape)}: quantise samples in [-1, 1] with lit_genai.metrics.fid.to_uint8"
            )
        images = images.to(self.device)
        if images.shape[0] == 0:  # a rank with nothing to add still takes part in compute()
            width, classes = int(self.extractor.num_features), int(self.extractor.num_classes)
            empty = torch.zeros(0, width, device=self.device)  # (0, D)
            return empty, torch.zeros(0, classes, device=self.device) if logits else None
        both = getattr(self.extractor, "features_and_logits", None)  # one pass instead of two, if offered
        with torch.autocast(self.device.type, enabled=False):  # features in float32 under bf16 training too
            if logits and both is not None:
                features, class_logits = both(images)  # (B, D), (B, K)
            else:
                features = self.extractor(images)  # (B, D)
                class_logits = self.extractor.logits(images) if logits else None  # (B, K)
        return features.float(), class_logits.float() if class_logits is not None else None

    def _labels(self, labels: Optional[Tensor], n: int) -> Optional[Tensor]:
        """Check the labels of ``n`` generated images: (n,) on this device, or None when not conditional."""
        if not self.conditional:
            return None
        if labels is None or labels.shape != (n,):
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise ConfigError(
                f"conditional QualityMetrics needs the (B,) labels the {n} images were generated for "
                f"(labels=), got {got}"
            )
        return labels.to(self.device)

    def _update(
        self, features: Tensor, logits: Optional[Tensor], real: bool, labels: Optional[Tensor] = None
    ) -> None:
        for key, part in self.parts.items():
            if key == "is":
                if not real:
                    part.update(logits)
            elif key == "cond_acc":
                if not real:
                    part.update(logits, labels)
            else:
                part.update(features, real=real)
