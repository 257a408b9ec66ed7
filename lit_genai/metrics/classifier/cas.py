"""The Classification Accuracy Score (CAS) as a plain, fast PyTorch loop.

Ravuri & Vinyals 2019, "Classification Accuracy Score for Conditional Generative Models": train a
classifier on generated images with the labels they were generated for (``train_classifier``), and
report its accuracy on real held-out images (``accuracy``). The same recipe on as many real training
images gives the ceiling to read it against. ``lit_genai.callbacks.evaluation.Evaluation`` runs it
(``cas=True``) on every rank's samples, gathered with ``lit_genai.metrics.gather.gather_labelled``.

Shape legend: N images, B batch, C channels, H/W spatial, K classes. Images are float in [-1, 1]
(docs/architecture.md, "Batches"); uint8 images in [0, 255] are accepted and mapped to [-1, 1] first.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.metrics.classifier.network import DomainClassifier
from lit_genai.paradigm import eval_mode


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
    steps: Optional[int] = None,
) -> DomainClassifier:
    """Train a ``DomainClassifier`` on (x, y) with Adam and a cosine LR decay; return it in eval mode.

    The training half of the CAS. Trains on ``x``'s device; the global RNG is left as it was
    (``seed`` fixes the initialisation, shuffling and augmentation).

    Args:
        x: Generated images (N, C, H, W), float in [-1, 1] or uint8.
        y: The labels (N,) they were generated for.
        num_classes: Number of classes K.
        epochs: Passes over (x, y).
        batch_size: Images per Adam step.
        lr: Adam's initial learning rate, decayed to 0 along a cosine.
        max_shift: ``random_shift`` augmentation in pixels; 0 turns it off.
        width: Channels of the network's first stage (``DomainClassifier``).
        feature_dim: Width of the network's penultimate layer.
        seed: Seed of the initialisation, shuffling and augmentation.
        steps: Train for this many Adam steps instead of ``epochs`` passes (over fresh shuffles of
            (x, y), the last one cut short), so that training sets of different sizes get one
            schedule (``lit_genai.augment``). None: ``epochs * ceil(N / batch_size)``.
    """
    x, y = _as_float_images(x), y.long().to(x.device)
    n = x.shape[0]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        net = DomainClassifier(x.shape[1], num_classes, width, feature_dim).to(x.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        total_steps = epochs * math.ceil(n / batch_size) if steps is None else steps
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
        net.train()
        step = 0
        while step < total_steps and n > 0:
            order = torch.randperm(n, generator=generator).to(x.device)  # (N,)
            for index in order.split(batch_size)[: total_steps - step]:
                step += 1
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
    """Fraction of (x, y) that ``net`` classifies correctly: the test half of the CAS.

    Args:
        net: A classifier of (B, C, H, W) images in [-1, 1] to (B, K) logits; run in eval mode.
        x: Real held-out images (N, C, H, W), float in [-1, 1] or uint8.
        y: Their labels (N,).
        batch_size: Images per forward pass.
    """
    with eval_mode(net):
        correct = sum(
            (net(_as_float_images(xb)).argmax(-1) == yb.to(xb.device)).sum().item()
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
        )
    return correct / max(len(y), 1)
