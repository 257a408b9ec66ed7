"""Sample-quality metrics during fit (every N epochs) and at ``lit-genai test``.

Generates images with the module's ``sample()`` (under EMA weights: this runs inside validation /
test, where the EMA callback has swapped the average in), quantises them to uint8 like real images,
and computes FID / KID / IS / precision / recall (``lit_genai.metrics.fid.QualityMetrics``) against
cached features of real images, with the extractor's name in every key (``val/fid_mnist``).

Under DDP the generation is split across ranks with distinct seeds; every rank takes part in every
collective (feature gathering in ``QualityMetrics.compute``, the barrier around the real-feature
cache), so no rank waits on another that skipped — the torchmetrics rank-0 hang.

At ``test`` the results (the test loop's metrics and these) are written as JSON next to the
checkpoint (``checkpoints/last.ckpt`` -> ``checkpoints/last.test.json``) with the protocol: how many
samples, which reference split, which extractor, which sampler settings (BASELINES.md: FID moves
with each of them).

Shape legend: B batch, C/H/W image, N images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lit_genai.callbacks.samples import class_labels, run_dir
from lit_genai.data.images import to_uint8
from lit_genai.metrics.classifier import accuracy, train_classifier
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.fid import METRICS, QualityMetrics, real_features

MetricName = Literal["fid", "kid", "is", "pr"]


class Evaluation(Callback):
    """FID / KID / IS / precision / recall of generated images, with the protocol logged.

    Args:
        every_n_epochs: During fit, evaluate after every n-th validation epoch (0 = only at test).
        at_test: Evaluate at ``lit-genai test``.
        num_samples: Generated images (in total over all ranks). FID falls as N grows: papers use
            50,000; compare numbers only at the same N.
        extractor: ``"inception"`` (needs the TF-Inception weights file), ``"mnist"`` (shipped domain
            classifier), or a classifier checkpoint path. Default: the data module's
            ``feature_extractor`` attribute (``mnist`` for MNIST, ``inception`` for CIFAR-10).
        weights_path: Weights file of the extractor (the Inception ``.pth``), if not in the hub cache.
        reference_split: Real images the statistics are taken from (DDPM: ``train``).
        num_real: Real images in the reference statistics (all, if the split is smaller; the protocol
            records the number used).
        metrics: Which of ``fid``, ``kid``, ``is`` (needs class logits), ``pr``.
        batch_size: Images generated per ``sample()`` call.
        seed: Base seed of the generated images (rank r, batch b uses seed + 1_000_003 r + b).
        cache_dir: Folder of cached real features (default ``$LIT_GENAI_CACHE`` or ``~/.cache/lit_genai``).
        sampler_options: Extra keyword arguments for ``sample()`` (e.g. ``{steps: 50}``), recorded in
            the protocol.
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
        reference_split: Literal["train", "val", "test"] = "train",
        num_real: int = 10000,
        metrics: Sequence[MetricName] = METRICS,
        batch_size: int = 250,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        sampler_options: Optional[dict[str, Any]] = None,
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
        self.sampler_options = dict(sampler_options or {})
        self.cas = cas
        self.cas_epochs = cas_epochs
        self._quality: Optional[QualityMetrics] = (
            None  # built lazily; kept out of the module (and its checkpoints)
        )
        self._protocol_logged = False
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
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        rank_zero_info(f"Test results written to {path}")

    # ------------------------------------------------------------------ the work
    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Generate, extract, compute and log ``<stage>/<metric>_<extractor>``; returns the numbers."""
        if not hasattr(pl_module, "sample") or getattr(pl_module, "modality", "image") != "image":
            return {}
        datamodule = trainer.datamodule
        name = self.extractor or getattr(datamodule, "feature_extractor", None)
        if name is None:
            rank_zero_warn(
                f"Evaluation: no feature extractor for {type(datamodule).__name__}; set "
                "--evaluation.extractor (e.g. a classifier trained with experiments/eval/*_classifier.yaml). "
                "Skipping quality metrics."
            )
            return {}
        quality = self._metrics(name, pl_module.device)

        # Real statistics: rank 0 fills the cache first, the others then read it.
        reference = self._reference_loader(datamodule)
        dataset = type(datamodule).__name__
        features = None
        if trainer.is_global_zero:
            features = self._real_features(reference, quality, dataset)
        trainer.strategy.barrier("lit_genai_real_features")
        if features is None:
            features = self._real_features(reference, quality, dataset)
        quality.set_real_features(features)

        # This rank's share of the generated images, with its own seeds.
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = math.ceil(self.num_samples / world)
        num_classes = getattr(pl_module, "num_classes", 0)
        batches = range(0, per_rank, self.batch_size)
        kept: list[tuple[Tensor, Tensor]] = []  # (uint8 images, labels) for CAS
        for b, start in enumerate(tqdm(batches, desc=f"Evaluation ({name})", disable=rank != 0, leave=False)):
            n = min(self.batch_size, per_rank - start)
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * rank + b)
            cond = class_labels(n, num_classes, pl_module.device)
            if cond is not None:  # balanced classes over the global sample index
                cond = (cond + rank * per_rank + start) % num_classes
            images = pl_module.sample(
                n, cond=cond, generator=generator, **self.sampler_options
            )  # (n, C, H, W)
            quality.update_fake(to_uint8(images))
            if self.cas and cond is not None:
                kept.append((to_uint8(images).cpu(), cond.cpu()))
        results = quality.compute()  # collective: gathers every rank's features
        quality.reset_fake()
        if self.cas and num_classes > 0:
            results.update(self._classification_accuracy_score(trainer, pl_module, kept, num_classes))

        protocol = quality.protocol(
            reference=f"{dataset}/{self.reference_split}",
            sampler=self._sampler_settings(pl_module),
            num_real_requested=self.num_real,
        ).as_dict()
        self.last_results, self.last_protocol = results, protocol
        for key, value in results.items():
            pl_module.log(f"{stage}/{key}", value, rank_zero_only=False, sync_dist=False)
        if not self._protocol_logged:
            for logger in trainer.loggers:
                logger.log_hyperparams({"evaluation_protocol": protocol})
            self._protocol_logged = True
        return results

    # ------------------------------------------------------------------ helpers
    def _classification_accuracy_score(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        kept: list[tuple[Tensor, Tensor]],
        num_classes: int,
    ) -> dict[str, float]:
        """Train on generated (all ranks' images, gathered), test on the real test split."""
        x = torch.cat([images for images, _ in kept]).to(pl_module.device)  # (n, C, H, W) uint8
        y = torch.cat([labels for _, labels in kept]).to(pl_module.device)  # (n,)
        if trainer.world_size > 1:  # every rank trains the same classifier on the same data
            x = pl_module.all_gather(x).flatten(0, 1)  # (world * n, C, H, W)
            y = pl_module.all_gather(y).flatten(0, 1)
        datamodule = trainer.datamodule
        if getattr(datamodule, "test_set", None) is None:
            datamodule.setup("test")
        test_x, test_y = (
            torch.stack(t) for t in zip(*datamodule.test_set, strict=True)
        )  # (N, C, H, W), (N,)
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

    def _metrics(self, name: str, device: torch.device) -> QualityMetrics:
        if self._quality is None or self._quality.extractor.name != Path(name).stem:
            self._quality = QualityMetrics(
                get_extractor(name, self.weights_path), self.metrics, seed=self.seed
            )
        return self._quality.to(device)

    def _reference_loader(self, datamodule: pl.LightningDataModule) -> DataLoader:
        """An unshuffled, unaugmented loader over the reference split."""
        attribute = f"{self.reference_split}_set"
        if getattr(datamodule, attribute, None) is None:
            datamodule.setup("fit" if self.reference_split in ("train", "val") else "test")
        dataset = getattr(datamodule, attribute, None)
        if dataset is None:
            raise RuntimeError(f"{type(datamodule).__name__} has no {attribute} for the evaluation reference")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def _real_features(self, loader: DataLoader, quality: QualityMetrics, dataset: str) -> Tensor:
        return real_features(
            loader,
            quality.extractor,
            dataset=dataset,
            split=self.reference_split,
            num=self.num_real,
            cache_dir=self.cache_dir,
        )

    def _sampler_settings(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        keys = ("sampler", "sampling_steps", "eta", "skip", "variance", "guidance_scale", "clip_denoised")
        settings = {k: getattr(pl_module, k) for k in keys if hasattr(pl_module, k)}
        settings.update(self.sampler_options, seed=self.seed, ema=_ema_active(pl_module))
        return settings


def _ema_active(pl_module: pl.LightningModule) -> bool:
    """Whether an EMA callback has its average swapped into the module right now."""
    trainer = pl_module._trainer
    return any(getattr(cb, "swapped_in", False) for cb in (trainer.callbacks if trainer else []))
