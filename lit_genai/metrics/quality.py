"""Sample quality against real data with one feature extractor: ``QualityMetrics``.

``QualityMetrics`` extracts features once per batch with a ``lit_genai.metrics.features.FeatureExtractor``
(name, num_features, num_classes, ``forward(uint8 images) -> features``, ``logits(uint8 images) ->
logits``) and feeds them to the torchmetrics wrappers of ``lit_genai.metrics.fid``: FID (Heusel et al.
2017), KID (Bińkowski et al. 2018), IS (Salimans et al. 2016), improved precision / recall
(Kynkäänniemi et al. 2019), and the conditioning accuracy of a class-conditional model
(``lit_genai.metrics.conditioning``, as AC-GAN reports it: Odena et al. 2017). Cached real features
come from ``lit_genai.metrics.cache.real_features``.

Numbers from different extractors are not comparable, so the extractor's name is part of every key
(``fid_mnist``, ``fid_inception``; docs/architecture.md). Generated images are quantised to uint8
exactly as real images are (``lit_genai.media.to_uint8``) before the extractor sees them.
``protocol()`` reports what the numbers were measured on (``lit_genai.metrics.protocol.Protocol``).

Distributed (DDP): ``compute()`` is a collective call (torchmetrics gathers every rank's states);
see ``QualityMetrics`` for what every rank must do.

Shape legend: B batch, C channels, H/W spatial, N real feature vectors, D feature width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

from lit_genai.errors import ConfigError
from lit_genai.metrics.conditioning import ConditionalAccuracy
from lit_genai.metrics.fid import FeatureFID, FeatureIS, FeatureKID, FeaturePrecisionRecall
from lit_genai.metrics.protocol import Protocol

MetricName = Literal["fid", "kid", "is", "pr"]
METRICS: tuple[MetricName, ...] = ("fid", "kid", "is", "pr")


class QualityMetrics(nn.Module):
    """FID, KID, IS, precision / recall and conditioning accuracy of generated images with one
    feature extractor.

    Real statistics come from ``set_real_features`` (cached features of
    ``lit_genai.metrics.cache.real_features``) or ``update_real``; generated images from ``update_fake``
    (with the labels they were drawn for when ``conditional``). ``compute()`` returns ``{"fid_<name>",
    "kid_<name>", "kid_<name>_std", "is_<name>", "is_<name>_std", "precision_<name>", "recall_<name>",
    "cond_acc_<name>"}`` (those asked for) as floats; the caller adds ``val/`` or ``test/``.
    ``reset_fake()`` clears the generated images and keeps the real statistics, for the next evaluation.
    The extractor runs once per batch (with IS or ``conditional``, through its ``features_and_logits``
    when it has one, else ``forward`` and ``logits``), under ``torch.no_grad`` and in float32 even
    inside an autocast region.

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
            parts["fid"] = FeatureFID(width)
        if "kid" in self.names:
            parts["kid"] = FeatureKID(width, kid_subsets, kid_subset_size)
        if "is" in self.names:
            parts["is"] = FeatureIS(classes, is_splits)
        if "pr" in self.names:
            parts["pr"] = FeaturePrecisionRecall(width, pr_k)
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
                f"{tuple(images.shape)}: quantise samples in [-1, 1] with lit_genai.media.to_uint8"
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
