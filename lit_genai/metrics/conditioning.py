"""Conditioning accuracy: how often a class-conditional generator draws the class it was asked for.

    cond_acc = (1 / M) Σ_i [argmax_k logits(x_i)_k = y_i]

where x_i is a sample generated for label y_i and ``logits`` are the class logits of a classifier of
the data's domain (the feature extractor's, e.g. the shipped MNIST classifier). It is the accuracy
of a pre-trained classifier on labelled samples, as AC-GAN reports it (Odena, Olah & Shlens 2017,
"Conditional Image Synthesis with Auxiliary Classifier GANs"); 1/K is chance, and the classifier's
accuracy on real test images is the ceiling. It says whether samples carry their label, not
whether they are good or diverse: read it beside FID and recall (and CAS, Ravuri & Vinyals 2019).

``ConditionalAccuracy`` keeps two sums, all-reduced under DDP (torchmetrics), so every rank gets
the accuracy over every rank's samples; a rank with no samples adds zeros.

Shape legend: B batch, K classes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_genai.errors import ConfigError

__all__ = ["ConditionalAccuracy"]


class ConditionalAccuracy(Metric):
    """Share of generated samples whose arg-max class logit is the label they were generated for.

    ``update(logits (B, K), labels (B,))``, ``compute() -> 0-d tensor``; ``num_fake`` holds the
    number of samples of the last ``compute()``.
    """

    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.num_fake = 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ConfigError(
                f"conditioning accuracy takes logits (B, K) and labels (B,), got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        self.correct += (logits.argmax(dim=1) == labels.to(logits.device)).sum()
        self.total += labels.shape[0]

    def compute(self) -> Tensor:  # runs on the all-reduced sums
        self.num_fake = int(self.total)
        if self.num_fake == 0:
            raise ConfigError(
                "conditioning accuracy needs generated images with their labels: pass labels= to update_fake"
            )
        return self.correct.double() / self.total
