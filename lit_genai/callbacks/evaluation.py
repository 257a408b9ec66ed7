"""Sample-quality metrics during fit (every N epochs) and at ``lit-genai test``.

Generates images with the module's ``sample()`` (under EMA weights: this runs inside validation /
test, where the EMA callback has swapped the average in), quantises them to uint8 like real images,
and computes FID / KID / IS / precision / recall (``lit_genai.metrics.quality.QualityMetrics``) against
cached features of real images, with the extractor's name in every key (``val/fid_mnist``). For a
class-conditional model whose classes the extractor's classifier knows, it also reports
``<stage>/cond_acc_<extractor>``: the share of samples classified as the class they were drawn for.

A text-conditioned model (``"text"`` in its ``conditions``) on captioned data draws sample i with the
caption of item i of the evaluation split (``val`` during fit, ``test`` at ``lit-genai test``) and is
compared with the real images of that split. With an attribute classifier as the extractor
(``lit_genai.metrics.features.AttributeFeatures``) and data with ``attribute_names``, it also reports
the attribute accuracy (``lit_genai.metrics.attribute_accuracy``): ``<stage>/attr_acc_<extractor>``
and ``<stage>/attr_acc_<extractor>_<attribute>`` over those captions, and
``<stage>/attr_acc_heldout_<extractor>[_<attribute>]`` over captions of the data's ``held_out_set``
(attribute combinations never trained on).

It reads the module only through the generative-module contract (``lit_genai.paradigm``,
docs/architecture.md): ``is_generative`` and ``modality`` (image modules are evaluated, others are
skipped for now), ``sample``, ``num_classes`` and ``sampling_settings(**sampling)`` for the protocol,
plus the optional ``likelihood_protocol()`` of a likelihood model for the test JSON; whether EMA
weights are swapped in comes from the trainer's callbacks. A model of image tokens or pixels (``sample`` gives
integer ids) is scored on the images its data module's ``decode`` makes of them, against the real
images of the image data module it wraps (``images``). The real-feature cache is keyed on the data module's
``identity()``, so another seed, split or folder never reuses the features of the first.

Under DDP the generation is split across ranks with distinct seeds; every rank takes part in every
collective (feature gathering in ``QualityMetrics.compute``, the barrier around the real-feature
cache), so no rank waits on another that skipped — the torchmetrics rank-0 hang.
Under a sharded strategy (FSDP, DeepSpeed) every ``sample()`` call is itself a collective (its
forward passes gather the parameters), so every rank makes as many calls as rank 0, through the
root wrapper (``lit_genai.sharding.forward_outside_step``).

At ``test`` the results (the test loop's metrics and these) are written as JSON next to the
checkpoint (``checkpoints/last.ckpt`` -> ``checkpoints/last.test.json``) with the protocol: how many
samples, which reference split, which extractor, which sampler settings (FID moves with each of
them).

Shape legend: B batch, C/H/W image, N images, K classes, A attributes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lit_genai import paradigm, sharding
from lit_genai.callbacks.samples import run_dir
from lit_genai.media import to_uint8
from lit_genai.metrics.attribute_accuracy import AttributeScores, has_captions, split_items
from lit_genai.metrics.cache import real_features
from lit_genai.metrics.classifier.cas import accuracy, train_classifier
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.gather import gather_labelled
from lit_genai.metrics.quality import METRICS, MetricName, QualityMetrics


class Evaluation(Callback):
    """FID / KID / IS / precision / recall of generated images, with the protocol logged.

    Args:
        every_n_epochs: During fit, evaluate after every n-th validation epoch (0 = only at test).
        at_test: Evaluate at ``lit-genai test``.
        num_samples: Generated images (in total over all ranks). FID falls as N grows: papers use
            50,000; compare numbers only at the same N. Their labels (class-conditional models)
            cycle through the classes over the global sample index; their captions (text-conditioned
            models) are those of items 0, 1, ... of the evaluation split, cycling when it is smaller.
            The held-out attribute accuracy draws min(num_samples, len(held_out_set)) more.
        extractor: ``"inception"`` (needs the TF-Inception weights file), ``"mnist"`` (shipped domain
            classifier), or a classifier checkpoint path (a domain ``Classifier``'s, or an
            ``AttributeTraining`` checkpoint: then the attribute accuracy of text-conditioned models
            too). Default: the data module's ``feature_extractor`` attribute (``mnist`` for MNIST,
            ``inception`` for CIFAR-10).
        weights_path: Weights file of the extractor (the Inception ``.pth``), if not in the hub cache.
        reference_split: Real images the statistics are taken from (DDPM: ``train``). Default
            (None): ``train``, but for a text-conditioned model on captioned data the evaluation
            split (``val`` during fit, ``test`` at test), whose captions the samples are drawn for.
        num_real: Real images in the reference statistics (all, if the split is smaller; the protocol
            records the number used).
        metrics: Which of ``fid``, ``kid``, ``is`` (needs class logits; dropped for an attribute
            classifier, which has none), ``pr``. The conditioning accuracy ``cond_acc`` comes on top,
            for every class-conditional model whose number of classes the extractor's classifier
            has, and the attribute accuracy ``attr_acc`` for a text-conditioned one with an
            attribute classifier.
        batch_size: Images generated per ``sample()`` call.
        seed: Base seed of the generated images: sample i uses the generator seed + i on any rank.
        cache_dir: Folder of cached real features (default ``$LIT_GENAI_CACHE`` or ``~/.cache/lit_genai``).
        sampling: Sampling settings for the evaluation's ``sample()`` calls, by the module's own
            names (e.g. ``{steps: 50}``), over the module's ``sampling``; the protocol records the
            settings used (``sampling_settings(**sampling)``), each once.
        cas: Also report the Classification Accuracy Score of a class-conditional model (Ravuri &
            Vinyals 2019) as ``<stage>/cas``: a ``DomainClassifier`` trained on the generated images
            and their labels, tested on the real test split (compare with the same classifier
            trained on as many real images, ``<stage>/cas_real``). Takes the generated images of
            every rank to every rank, and a short training run: off by default.
        cas_epochs: Training epochs of the CAS classifier.
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        at_test: bool = True,
        num_samples: int = 1000,
        extractor: Optional[str] = None,
        weights_path: Optional[str] = None,
        reference_split: Optional[Literal["train", "val", "test"]] = None,
        num_real: int = 10000,
        metrics: Sequence[MetricName] = METRICS,
        batch_size: int = 250,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        sampling: Optional[dict[str, Any]] = None,
        cas: bool = False,
        cas_epochs: int = 15,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.at_test = at_test
        self.num_samples = num_samples
        self.extractor = extractor
        self.weights_path = weights_path
        self.reference_split = reference_split
        self.num_real = num_real
        self.metrics = tuple(metrics)
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = cache_dir
        self.sampling = dict(sampling or {})
        self.cas = cas
        self.cas_epochs = cas_epochs
        self._quality: Optional[QualityMetrics] = None  # built lazily; kept out of the module's checkpoints
        self._protocol_logged = False
        self._told: set[str] = set()  # one-time notices already given
        self.last_results: dict[str, float] = {}
        self.last_protocol: dict[str, Any] = {}

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_test:
            self.evaluate(trainer, pl_module, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        path = (
            Path(trainer.ckpt_path).with_suffix(".test.json")
            if trainer.ckpt_path
            else run_dir(trainer) / "test.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"checkpoint": trainer.ckpt_path, "metrics": results, "protocol": self.last_protocol}
        likelihood_protocol = getattr(pl_module, "likelihood_protocol", None)
        if callable(likelihood_protocol):  # what the likelihood numbers measure (e.g. the VAE's)
            payload["likelihood_protocol"] = likelihood_protocol()
        task_protocol = getattr(pl_module, "task_protocol", None)
        if task_protocol:  # how a language model's task scores were measured (ar.NextToken)
            payload["task_protocol"] = task_protocol
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        rank_zero_info(f"Test results written to {path}")

    # ------------------------------------------------------------------ the work
    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Generate, extract, compute and log ``<stage>/<metric>_<extractor>``; returns the numbers."""
        if not paradigm.is_generative(pl_module) or pl_module.modality != "image":
            return {}  # quality metrics of text and audio samples are not implemented yet
        datamodule = trainer.datamodule
        token_data = datamodule  # decodes token samples (ImageTokens, ImagePixels) into images
        datamodule = _image_data(datamodule)  # the real images: a wrapped image data module's
        name = self.extractor or getattr(token_data, "feature_extractor", None)
        if name is None:
            rank_zero_warn(
                f"Evaluation: no feature extractor for {type(datamodule).__name__}; set "
                "--evaluation.extractor (e.g. a classifier trained with experiments/eval/*_classifier.yaml). "
                "Skipping quality metrics."
            )
            return {}
        num_classes = int(pl_module.num_classes)
        quality = self._metrics(name, num_classes, pl_module.device)
        # A text-conditioned model on captioned data draws the captions of the evaluation split and is
        # compared with that split's images (the model is asked for what those images show).
        captioned = (
            self._dataset(datamodule, stage) if "text" in getattr(pl_module, "conditions", ()) else None
        )
        captioned = captioned if has_captions(captioned) else None
        split = self.reference_split or (stage if captioned is not None else "train")
        attributes = self._attribute_names(quality, datamodule) if captioned is not None else None

        # Real statistics: rank 0 fills the cache first, the others then read it.
        reference = self._reference_loader(datamodule, split)
        dataset = type(datamodule).__name__
        key = self._data_key(datamodule)
        features = None
        if trainer.is_global_zero:
            features = self._real_features(reference, quality, dataset, key, split)
        trainer.strategy.barrier("lit_genai_real_features")
        if features is None:
            features = self._real_features(reference, quality, dataset, key, split)
        quality.set_real_features(features)

        kept: list[tuple[Tensor, Tensor]] = []  # (uint8 images, labels) for CAS
        seen = AttributeScores(attributes, f"attr_acc_{quality.extractor.name}") if attributes else None

        def condition(start: int, n: int) -> tuple[Any, Optional[Tensor]]:
            """The condition of global samples [start, start + n), and the attributes they ask (n, A)."""
            if captioned is not None:
                captions, asked = split_items(captioned, range(start, start + n), attributes is not None)
                return {"text": captions}, asked
            if num_classes > 0:  # balanced classes over the global sample index
                return torch.arange(start, start + n, device=pl_module.device) % num_classes, None  # (n,)
            return None, None

        def consume(images: Tensor, cond: Any, asked: Optional[Tensor]) -> None:
            labels = cond if isinstance(cond, Tensor) else None
            quality.update_fake(images, labels=labels if quality.conditional else None)  # (n, C, H, W)
            if seen is not None:
                seen.update(quality.extractor.attribute_logits(images.to(quality.device)), asked)
            if self.cas and labels is not None:
                kept.append((images.cpu(), labels.cpu()))

        self._generate(trainer, pl_module, self.num_samples, condition, consume, f"Evaluation ({name})")
        results = quality.compute()  # collective: gathers every rank's features
        quality.reset_fake()
        if self.cas and num_classes > 0:
            results.update(self._classification_accuracy_score(trainer, pl_module, kept, num_classes))

        protocol = quality.protocol(
            reference=f"{dataset}/{split}",
            sampler=self._sampler_settings(trainer, pl_module),
            num_real_requested=self.num_real,
        ).as_dict()
        if captioned is not None:
            protocol["captions"] = {
                "split": stage,
                "num_samples": self.num_samples,
                "split_size": len(captioned),
            }
        if seen is not None:
            results.update(seen.compute(pl_module.device))  # collective
            protocol["attributes"] = {
                "extractor": quality.extractor.name,
                "names": list(attributes),
                "seen": {"split": stage, "num_samples": seen.num_scored},
                **self._held_out_accuracy(trainer, pl_module, datamodule, quality, attributes, results),
            }
        self.last_results, self.last_protocol = results, protocol
        for metric, value in results.items():
            # the same value on every rank: the max over ranks keeps it exactly, and sync_dist keeps
            # Lightning from warning about epoch-level values logged without it under DDP
            pl_module.log(f"{stage}/{metric}", value, sync_dist=True, reduce_fx="max")
        if not self._protocol_logged:
            for logger in trainer.loggers:
                logger.log_hyperparams({"evaluation_protocol": protocol})
            self._protocol_logged = True
        return results

    # ------------------------------------------------------------------ helpers
    def _generate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        total: int,
        condition: Callable[[int, int], tuple[Any, Optional[Tensor]]],
        consume: Callable[[Tensor, Any, Optional[Tensor]], None],
        desc: str,
    ) -> None:
        """Draw this rank's share of the global samples [0, total) in batches and hand each batch to
        ``consume(uint8 images (n, C, H, W), cond, asked)``; ``condition(start, n)`` gives a batch's
        ``cond`` and the attributes it asks."""
        # Sample i is drawn from the generator seed + i (as in predict), so the numbers do not depend on
        # world or batch size.
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = math.ceil(total / world)
        first, last = min(rank * per_rank, total), min((rank + 1) * per_rank, total)
        batches = range(first, last, self.batch_size)
        for start in tqdm(batches, desc=desc, disable=rank != 0, leave=False):
            n = min(self.batch_size, last - start)
            generator = paradigm.sample_generators(self.seed, range(start, start + n))
            cond, asked = condition(start, n)
            draw = functools.partial(pl_module.sample, n, cond=cond, generator=generator, **self.sampling)
            samples = sharding.forward_outside_step(trainer, pl_module, draw)
            images = to_uint8(samples) if samples.is_floating_point() else trainer.datamodule.decode(samples)
            consume(images, cond, asked)
        if sharding.sharded_strategy(trainer) is not None:
            # Each sample() call gathers the sharded parameters from every rank, so a rank with fewer
            # batches (the last ones hold the remainder) joins the others' extra calls, discarding them.
            calls = math.ceil(min(per_rank, total) / self.batch_size)  # rank 0's, the most
            one = paradigm.sample_generators(self.seed, [0])  # the same settings: the same passes
            extra = functools.partial(
                pl_module.sample, 1, cond=condition(0, 1)[0], generator=one, **self.sampling
            )
            for _ in range(calls - len(batches)):
                sharding.forward_outside_step(trainer, pl_module, extra)

    def _held_out_accuracy(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        quality: QualityMetrics,
        attributes: Sequence[str],
        results: dict[str, float],
    ) -> dict[str, Any]:
        """Add ``attr_acc_heldout_<extractor>[_<attribute>]`` over captions of the data's ``held_out_set``
        (sample i: caption of item i, generator seed + i) to ``results``; returns its protocol entry."""
        held_out = self._dataset(datamodule, "held_out")
        total = min(self.num_samples, len(held_out)) if held_out is not None else 0
        if total == 0:
            return {}
        scores = AttributeScores(attributes, f"attr_acc_heldout_{quality.extractor.name}")

        def condition(start: int, n: int) -> tuple[Any, Optional[Tensor]]:
            captions, asked = split_items(held_out, range(start, start + n), attributes=True)
            return {"text": captions}, asked

        def consume(images: Tensor, cond: Any, asked: Optional[Tensor]) -> None:
            scores.update(quality.extractor.attribute_logits(images.to(quality.device)), asked)

        self._generate(trainer, pl_module, total, condition, consume, "Evaluation (held-out captions)")
        results.update(scores.compute(pl_module.device))  # collective
        return {"heldout": {"split": "held_out", "num_samples": scores.num_scored}}

    def _attribute_names(
        self, quality: QualityMetrics, datamodule: pl.LightningDataModule
    ) -> Optional[tuple[str, ...]]:
        """The data's attributes when the extractor is an attribute classifier that reads them (checked:
        one ``ConfigError`` line otherwise), else None (no attribute accuracy)."""
        names = getattr(datamodule, "attribute_names", None)
        if names is None or not hasattr(quality.extractor, "attribute_logits"):
            if names is not None:
                self._tell(
                    f"Evaluation: the {quality.extractor.name!r} extractor is no attribute classifier: no "
                    "attribute accuracy (give --evaluation.extractor a checkpoint of "
                    "experiments/eval/shapes_attributes.yaml)"
                )
            return None
        quality.extractor.check_attributes(datamodule.attribute_values)
        return tuple(names)

    def _dataset(self, datamodule: pl.LightningDataModule, split: str) -> Any:
        """The data module's ``<split>_set`` (set up first if needed), or None when it has none."""
        attribute = f"{split}_set"
        if getattr(datamodule, attribute, None) is None:
            datamodule.setup("fit" if split in ("train", "val") else "test")
        return getattr(datamodule, attribute, None)

    def _classification_accuracy_score(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        kept: list[tuple[Tensor, Tensor]],
        num_classes: int,
    ) -> dict[str, float]:
        """Train on generated (all ranks' images, gathered), test on the real test split."""
        datamodule = _image_data(trainer.datamodule)
        if getattr(datamodule, "test_set", None) is None:
            datamodule.setup("test")
        test_x, test_y = (
            torch.stack(t) for t in zip(*datamodule.test_set, strict=True)
        )  # (N, C, H, W), (N,)
        # Every rank trains the same classifier on the same data. Ranks hold unequal shares (334 / 334 /
        # 332 of 1,000 on 3 ranks) or none (more ranks than batches): gather_labelled pads and trims.
        x, y = gather_labelled(kept, test_x.shape[1:], pl_module.device)  # (n, C, H, W) uint8, (n,)
        train_x, train_y = (
            torch.stack(t)
            for t in zip(
                *[datamodule.train_set[i] for i in range(min(len(x), len(datamodule.train_set)))], strict=True
            )
        )
        # The test loop runs under inference mode; training needs autograd and non-inference tensors.
        with torch.inference_mode(False), torch.enable_grad():
            x, y, train_x, train_y = (t.clone().to(pl_module.device) for t in (x, y, train_x, train_y))
            on_generated = train_classifier(x, y, num_classes, epochs=self.cas_epochs, seed=self.seed)
            on_real = train_classifier(train_x, train_y, num_classes, epochs=self.cas_epochs, seed=self.seed)
        test_x, test_y = test_x.to(x.device), test_y.to(x.device)
        return {"cas": accuracy(on_generated, test_x, test_y), "cas_real": accuracy(on_real, test_x, test_y)}

    def _metrics(self, name: str, num_classes: int, device: torch.device) -> QualityMetrics:
        """The metric set for extractor ``name``, conditional when the extractor knows the model's
        classes; the extractor is loaded once and reused."""
        old = self._quality
        same_extractor = old is not None and old.extractor.name == Path(name).stem
        extractor = old.extractor if same_extractor else get_extractor(name, self.weights_path)
        classes = int(extractor.num_classes)
        conditional = num_classes > 0 and classes == num_classes
        if num_classes > 0 and not conditional:
            self._tell(
                f"Evaluation: the {extractor.name!r} extractor has {classes} classes and the model "
                f"{num_classes}: no conditioning accuracy (give an extractor trained on the data's classes)"
            )
        metrics = self.metrics
        if hasattr(extractor, "attribute_logits") and classes == 0 and "is" in metrics:
            # an attribute classifier has one softmax per attribute, no class set for an Inception Score
            metrics = tuple(m for m in metrics if m != "is") or ("fid",)
            self._tell(f"Evaluation: the attribute classifier {extractor.name!r} has no class logits: no IS")
        if not same_extractor or old.conditional != conditional:
            self._quality = QualityMetrics(extractor, metrics, seed=self.seed, conditional=conditional)
        return self._quality.to(device)

    def _data_key(self, datamodule: pl.LightningDataModule) -> Optional[dict[str, Any]]:
        """The data module's ``identity()`` (what decides its images), the key of the real-feature
        cache; None for a data module without one (its features are then recomputed each time)."""
        identity = getattr(datamodule, "identity", None)
        if callable(identity):
            return identity()
        self._tell(
            f"Evaluation: {type(datamodule).__name__} has no identity() saying what decides its images, "
            "so its real features are recomputed at every evaluation instead of cached "
            "(see lit_genai.data.images.ImageDataModule.identity)"
        )
        return None

    def _tell(self, message: str) -> None:
        if message not in self._told:
            self._told.add(message)
            rank_zero_info(message)

    def _reference_loader(self, datamodule: pl.LightningDataModule, split: str) -> DataLoader:
        """An unshuffled, unaugmented loader over the reference split."""
        dataset = self._dataset(datamodule, split)
        if dataset is None:
            raise RuntimeError(f"{type(datamodule).__name__} has no {split}_set for the evaluation reference")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def _real_features(
        self,
        loader: DataLoader,
        quality: QualityMetrics,
        dataset: str,
        key: Optional[dict[str, Any]],
        split: str,
    ) -> Tensor:
        return real_features(
            loader,
            quality.extractor,
            dataset=dataset,
            split=split,
            num=self.num_real,
            key=key,
            cache=key is not None,
            cache_dir=self.cache_dir,
        )

    def _sampler_settings(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The settings the ``sample()`` calls use (the module's, with ``sampling`` applied), the seed and
        whether EMA weights are swapped in."""
        settings = dict(pl_module.sampling_settings(**self.sampling))
        settings.update(seed=self.seed, ema=_ema_active(trainer))
        return settings


def _image_data(datamodule: pl.LightningDataModule) -> pl.LightningDataModule:
    """The data module holding the real images: the one wrapped by a token data module
    (``data.tokens.ImageTokens``, ``data.pixels.ImagePixels``: its ``images``), else itself."""
    images = getattr(datamodule, "images", None)
    return images if isinstance(images, pl.LightningDataModule) else datamodule


def _ema_active(trainer: pl.Trainer) -> bool:
    """Whether one of the trainer's callbacks (the EMA callback) has its average swapped in right now."""
    return any(getattr(callback, "swapped_in", False) is True for callback in trainer.callbacks)
