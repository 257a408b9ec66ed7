"""A small CNN that classifies the data's own domain: features for metrics, and a CAS trainer.

Two uses in the evaluation protocol:

- **Domain features.** ImageNet's Inception judges 28x28 grey digits after upsampling them to
  299x299 RGB, far from anything it was trained on. A classifier trained on the domain gives
  features (penultimate layer) and logits for FID / KID / IS / precision-recall that track digit
  quality; ``lit_genai.metrics.features.DomainFeatures`` wraps it. Such numbers are comparable only
  with numbers from the same weights, hence the extractor name in every metric key (``fid_mnist``).
- **Classification Accuracy Score** (Ravuri & Vinyals 2019, "Classification Accuracy Score for
  Conditional Generative Models"): train a classifier on generated images with their conditioning
  labels, report its accuracy on real test images.

One job per file:

- ``network``: ``DomainClassifier``, the network (VGG-style, Simonyan & Zisserman 2015).
- ``augment``: ``random_shift``, the translation augmentation of both trainers.
- ``module``: ``Classifier``, the LightningModule that trains the network under ``lit-genai fit``
  (``experiments/eval/mnist_classifier.yaml``), optionally adversarially (Madry et al. 2018).
- ``cas``: ``train_classifier`` and ``accuracy``, the CAS recipe as a plain, fast PyTorch loop.
- ``export``: reading weights files (``load_classifier_state``) and
  ``python -m lit_genai.metrics.classifier export CKPT OUT``, which turns a ``Classifier`` checkpoint
  into the float32 state dict shipped in ``lit_genai/metrics/weights/``.

The names are re-exported here: YAML class paths (``lit_genai.metrics.classifier.Classifier``,
``lit_genai.metrics.classifier.DomainClassifier``) and saved configs point at this package.

Shape legend: B batch, C channels, H/W spatial, D feature width (``feature_dim``), K classes.
"""

from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.metrics.classifier.cas import accuracy, train_classifier
from lit_genai.metrics.classifier.export import export_weights, load_classifier_state
from lit_genai.metrics.classifier.module import Classifier
from lit_genai.metrics.classifier.network import DomainClassifier

__all__ = [
    "Classifier",
    "DomainClassifier",
    "accuracy",
    "export_weights",
    "load_classifier_state",
    "random_shift",
    "train_classifier",
]
