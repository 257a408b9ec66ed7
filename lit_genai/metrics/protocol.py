"""``Protocol``: what a set of sample-quality numbers was measured on.

FID moves by several points with the number of generated and real images, the reference split, the
feature extractor, KID's subset size and the sampler settings, so ``QualityMetrics.protocol()``
(``lit_genai.metrics.quality``) reports them with every result, and the Evaluation callback logs
them with the config and writes them next to the numbers. No paper: bookkeeping for those of
``lit_genai.metrics.quality``.

Shape legend: none (counts and settings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


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
