"""Feature extractors for sample-quality metrics: TF-Inception (FID/IS) and domain classifiers.

- ``InceptionFeatures``: the InceptionV3 of the TensorFlow FID code (Heusel et al. 2017) and of the
  Inception Score (Salimans et al. 2016), the 2015-12-05 graph ported to PyTorch by torch-fidelity
  and used by torchmetrics. Its 2048-d pool features and 1008 logits are the ones the papers'
  numbers (DDPM CIFAR-10 FID 3.17, IS 9.46) are measured with; torchvision's ImageNet InceptionV3
  gives different numbers. Its weights are never downloaded here: they come from ``weights_path`` or
  the torch hub cache.
- ``DomainFeatures``: a ``lit_genai.metrics.classifier.network.DomainClassifier`` trained on the data's own
  domain (penultimate features, class logits); ``"mnist"`` ships inside the package.
- ``AttributeFeatures``: a ``lit_genai.metrics.attributes.AttributeClassifier`` (one head per attribute,
  trained on ``CaptionedShapes``): penultimate features, and per-attribute logits for ``attr_acc``.

Every extractor takes uint8 images (B, C, H, W) in [0, 255]: the protocol quantises generated
images as real ones are stored (``lit_genai.media.to_uint8``), and each extractor maps
them to its own input range. ``name`` goes into metric keys (``val/fid_<name>``) because numbers
from different extractors are not comparable (docs/architecture.md, "Metric names").

Shape legend: B batch, C channels, H/W spatial, D features (``num_features``), K logits
(``num_classes``), K_a values of attribute a.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError, DataNotFoundError
from lit_genai.metrics.attributes.network import AttributeClassifier, is_attribute_state
from lit_genai.metrics.classifier.export import load_classifier_state
from lit_genai.metrics.classifier.network import DomainClassifier

# torch-fidelity's conversion of the TF FID Inception (torch_fidelity.feature_extractor_inceptionv3);
# torchmetrics' FID, KID and IS use the same file.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[-1]

# Domain classifiers shipped in lit_genai/metrics/weights/: name -> (file, (C, H, W) trained on).
# Reproduce with experiments/eval/mnist_classifier.yaml (its header has the command).
SHIPPED = {"mnist": ("mnist5k_classifier.pt", (1, 28, 28))}


class FeatureExtractor(nn.Module):
    """Base of the extractors: uint8 (B, C, H, W) images in, (B, D) features or (B, K) logits out.

    Extractors are frozen and always in eval mode (``train()`` is a no-op), so they can sit inside a
    LightningModule or a callback without BatchNorm statistics moving.
    """

    name: str  # goes into the metric keys: fid_<name>
    num_features: int  # D
    num_classes: int = 0  # K; 0 if the extractor has no logits (then no Inception Score)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> (B, D) float32 features."""
        return self.features_and_logits(images)[0]

    def logits(self, images: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> (B, K) float32 logits, for the Inception Score."""
        return self.features_and_logits(images)[1]

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) uint8 -> ((B, D), (B, K)) from one pass through the network."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)


def trained_input(images: Tensor, name: str, expected_shape: tuple[int, ...], what: str, fix: str) -> Tensor:
    """A classifier-extractor's input: uint8 images (B, C, H, W) of the ``expected_shape`` it was
    trained on (one ``ConfigError`` line otherwise, ``fix`` saying what to use) -> float in [-1, 1],
    as in its training."""
    check_uint8(images, name)
    actual = tuple(images.shape[1 : 1 + len(expected_shape)])
    if actual != expected_shape:
        raise ConfigError(
            f"the {name!r} {what} was trained on {list(expected_shape)} images, "
            f"got {list(images.shape[1:])}; {fix}"
        )
    return images.float() / 127.5 - 1  # (B, C, H, W)


def check_uint8(images: Tensor, name: str) -> None:
    """Enforce the input contract: (B, C, H, W) uint8 in [0, 255]."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            f"the {name} feature extractor takes uint8 images (B, C, H, W) in [0, 255], got "
            f"{images.dtype} of shape {tuple(images.shape)}; quantise generated images first "
            "(lit_genai.media.to_uint8)"
        )


class DomainFeatures(FeatureExtractor):
    """Features (penultimate layer) and logits of a classifier trained on the data's domain.

    Args:
        net: The trained ``DomainClassifier`` (images in [-1, 1]).
        name: Name in metric keys (``fid_<name>``), e.g. ``"mnist"``.
        sample_shape: (C, H, W) the classifier was trained on; other images are refused, since its
            features mean nothing at another resolution. None: check the channels only.
    """

    def __init__(
        self, net: DomainClassifier, name: str, sample_shape: Optional[tuple[int, ...]] = None
    ) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name = name
        self.expected_shape = tuple(sample_shape) if sample_shape is not None else (net.in_channels,)
        self.num_features = net.feature_dim
        self.num_classes = net.num_classes

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = trained_input(
            images,
            self.name,
            self.expected_shape,
            "feature extractor",
            "use the extractor of your data set or 'inception'",
        )
        features = self.net.features(x)  # (B, D)
        return features, self.net.head(features)  # (B, D), (B, K)

    @classmethod
    def from_file(cls, path: Union[str, Path], name: Optional[str] = None) -> DomainFeatures:
        """Load a ``DomainClassifier`` state dict or a ``Classifier`` checkpoint; name = file stem."""
        state, sample_shape = load_classifier_state(path)
        return cls(DomainClassifier.from_state_dict(state), name or Path(path).stem, sample_shape)


class AttributeFeatures(FeatureExtractor):
    """Features (penultimate layer) and per-attribute logits of an ``AttributeClassifier``.

    It has no single set of class logits (``num_classes`` 0: no Inception Score, no ``cond_acc``);
    ``attribute_logits`` gives one (B, K_a) tensor per attribute instead, for ``attr_acc``.

    Args:
        net: The trained ``AttributeClassifier`` (images in [-1, 1]).
        name: Name in metric keys (``fid_<name>``, ``attr_acc_<name>``): the checkpoint's file stem.
        sample_shape: (C, H, W) the classifier was trained on; other images are refused. None: check
            the channels only.
        attribute_values: Attribute -> value names the heads were trained on (from the checkpoint),
            so that data listing its values in another order is refused (``check_attributes``).
    """

    def __init__(
        self,
        net: AttributeClassifier,
        name: str,
        sample_shape: Optional[tuple[int, ...]] = None,
        attribute_values: Optional[Mapping[str, Sequence[str]]] = None,
    ) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name = name
        self.expected_shape = tuple(sample_shape) if sample_shape is not None else (net.in_channels,)
        self.num_features = net.feature_dim
        self.attribute_values = (
            {k: tuple(v) for k, v in attribute_values.items()} if attribute_values is not None else None
        )

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The attributes the heads read, in head order."""
        return tuple(self.net.heads)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> (B, D) float32 features."""
        return self.features_and_attribute_logits(images)[0]

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) uint8 -> ((B, D) features, (B, 0) logits): no single class set (see the class)."""
        features = self(images)
        return features, features.new_zeros(features.shape[0], 0)

    def attribute_logits(self, images: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) uint8 -> {attribute: (B, K_a) float32 logits}."""
        return self.features_and_attribute_logits(images)[1]

    @torch.no_grad()
    def features_and_attribute_logits(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(B, C, H, W) uint8 -> ((B, D), {attribute: (B, K_a)}) from one pass through the network."""
        x = trained_input(
            images,
            self.name,
            self.expected_shape,
            "attribute classifier",
            "train one on your data's image size",
        )
        features = self.net.features(x)  # (B, D)
        return features, self.net.classify(features)

    def check_attributes(self, attribute_values: Mapping[str, Sequence[str]]) -> None:
        """One ``ConfigError`` line unless every head reads an attribute of the data with its values
        in the same order (the data's ``attribute_values``; the checkpoint's, when it has them)."""
        trained = self.attribute_values or {}
        for name, values in attribute_values.items():
            known = trained.get(name)
            if self.net.head_sizes.get(name) != len(values) or (known is not None and known != tuple(values)):
                raise ConfigError(
                    f"the attribute classifier {self.name!r} does not read the data's attribute {name!r} "
                    f"with values {list(values)} (its heads: {trained or self.net.head_sizes}); train one on "
                    "this data (experiments/eval/shapes_attributes.yaml)"
                )

    @classmethod
    def from_file(cls, path: Union[str, Path], name: Optional[str] = None) -> AttributeFeatures:
        """Load an ``AttributeTraining`` checkpoint (EMA weights if kept) or an ``AttributeClassifier``
        state dict; name = file stem. Loads with ``weights_only=True``."""
        state, sample_shape = load_classifier_state(path)
        values = _hyperparameters(path).get("attribute_values")
        return cls(AttributeClassifier.from_state_dict(state), name or Path(path).stem, sample_shape, values)


def _hyperparameters(path: Union[str, Path]) -> dict[str, Any]:
    """The ``hyper_parameters`` of a Lightning checkpoint (empty for a plain state dict)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    return dict(data.get("hyper_parameters") or {}) if "state_dict" in data else {}


def domain_extractor(name: str) -> DomainFeatures:
    """The classifier shipped for data set ``name`` (see ``SHIPPED``), loaded with ``weights_only=True``."""
    if name not in SHIPPED:
        raise ConfigError(f"no shipped domain classifier {name!r}; shipped: {sorted(SHIPPED)}")
    file, sample_shape = SHIPPED[name]
    resource = importlib.resources.files("lit_genai.metrics.weights") / file
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise DataNotFoundError(
                f"the shipped weights lit_genai/metrics/weights/{file} are missing from this install; "
                "reinstall lit_genai or rebuild them with experiments/eval/mnist_classifier.yaml"
            )
        state, _ = load_classifier_state(path)
    return DomainFeatures(DomainClassifier.from_state_dict(state), name, sample_shape)


class InceptionFeatures(FeatureExtractor):
    """TF-ported InceptionV3: 2048-d pool3 features (FID, KID, precision/recall) and 1008 logits
    without the bias term (``logits_unbiased``, what torch-fidelity and torchmetrics feed the IS).

    Images of any size are resized to 299x299 with TensorFlow 1.x's bilinear resize and mapped to
    [-1, 1] inside torch-fidelity's network, as in the TF FID code; grey images are repeated to RGB.

    Args:
        weights_path: The weights file (``weights-inception-2015-12-05-6726825d.pth``). Default: the
            torch hub cache, ``<torch.hub.get_dir()>/checkpoints/`` (where torchmetrics and
            torch-fidelity put it when they download it). Nothing is downloaded here.
    """

    name = "inception"
    num_features = 2048
    num_classes = 1008

    def __init__(self, weights_path: Optional[str] = None) -> None:
        super().__init__()
        path = find_inception_weights(weights_path)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise ConfigError(
                "the 'inception' extractor needs torch-fidelity: pip install torch-fidelity"
            ) from None
        try:
            # torch-fidelity loads the file with weights_only=False; check first that it holds tensors only.
            torch.load(path, map_location="cpu", weights_only=True)
            self.net = FeatureExtractorInceptionV3(
                name="inception-v3-compat",
                features_list=["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(path),
            )
        except Exception as err:  # truncated download, wrong file, unsafe pickle
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"cannot load Inception weights {str(path)!r} ({message}); download {INCEPTION_URL} again"
            ) from err

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        check_uint8(images, self.name)
        if images.shape[1] not in (1, 3):
            raise ConfigError(
                f"the inception feature extractor takes grey or RGB images, got {images.shape[1]} channels"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB: (B, 3, H, W)
        features, logits = self.net(images)  # (B, 2048), (B, 1008)
        return features, logits


def find_inception_weights(weights_path: Optional[str] = None) -> Path:
    """The Inception weights file: ``weights_path`` or the torch hub cache; raises
    ``DataNotFoundError`` saying where to get it and where to put it, never downloads."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return path
        raise DataNotFoundError(
            f"Inception weights not found at weights_path={str(path)!r}: download {INCEPTION_URL}"
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path.is_file():
        return path
    raise DataNotFoundError(
        f"Inception weights {INCEPTION_FILE} not found in {str(path.parent)!r}: download {INCEPTION_URL} "
        f"into that folder, or pass the file's path as weights_path"
    )


def get_extractor(name: str, weights_path: Optional[str] = None) -> FeatureExtractor:
    """Extractor by name: ``"inception"`` (``weights_path`` = its weights file), a shipped domain
    classifier (``"mnist"``; ``weights_path`` replaces the shipped weights), or the path of a
    classifier state dict / ``Classifier`` checkpoint, or of an ``AttributeTraining`` checkpoint /
    ``AttributeClassifier`` state dict (told apart by the attribute heads in the weights; named after
    the file's stem)."""
    if name == "inception":
        return InceptionFeatures(weights_path)
    if name in SHIPPED:
        if weights_path is not None:
            return DomainFeatures.from_file(weights_path, name)
        return domain_extractor(name)
    path = Path(name).expanduser()
    if path.is_file():
        state, sample_shape = load_classifier_state(path)
        if is_attribute_state(state):
            return AttributeFeatures.from_file(path)
        return DomainFeatures(DomainClassifier.from_state_dict(state), path.stem, sample_shape)
    looks_like_path = "/" in name or Path(name).suffix in (".pt", ".pth", ".ckpt")
    raise ConfigError(
        f"unknown feature extractor {name!r}"
        + (" (no such file)" if looks_like_path else "")
        + f"; choose 'inception', {', '.join(repr(n) for n in SHIPPED)}, or the path of a "
        "classifier state dict / lit_genai Classifier or AttributeTraining checkpoint"
    )
