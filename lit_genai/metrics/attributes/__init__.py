"""An attribute classifier of the data's own domain: does a generated image show what its caption asked?

A text-to-image model is asked for "a small red circle at the top left on a blue background"; a
classifier with one head per attribute (shape, colour, size, position, background; trained on the
ground truth of ``lit_genai.data.CaptionedShapes``) reads each attribute back from the generated
image. The share of asked attributes it reads back is the attribute accuracy ``attr_acc_<extractor>``
(``lit_genai.metrics.attribute_accuracy``), a compositional counterpart of the conditioning accuracy
of class-conditional models (AC-GAN's, Odena et al. 2017), in the spirit of the detector-based
scores of text-to-image benchmarks (GenEval, Ghosh et al. 2023; T2I-CompBench, Huang et al. 2023).
Its penultimate features also serve FID / KID / precision-recall
(``lit_genai.metrics.features.AttributeFeatures``).

One job per file:

- ``network``: ``AttributeClassifier``, the network (the domain classifier's VGG-style trunk, one
  linear head per attribute).
- ``module``: ``AttributeTraining``, the LightningModule that trains it under ``lit-genai fit``
  (``experiments/eval/shapes_attributes.yaml``).
- ``report``: ``split_accuracy`` and ``python -m lit_genai.metrics.attributes accuracy CKPT``, its
  per-attribute accuracy on real test and held-out pictures (the ceiling of ``attr_acc``).

Shape legend: B batch, C channels, H/W spatial, D feature width, A attributes, K_a values of attribute a.
"""

from lit_genai.metrics.attributes.module import AttributeTraining
from lit_genai.metrics.attributes.network import AttributeClassifier, is_attribute_state
from lit_genai.metrics.attributes.report import split_accuracy

__all__ = ["AttributeClassifier", "AttributeTraining", "is_attribute_state", "split_accuracy"]
