"""What the image-to-image modules (``Pix2Pix``, ``CycleGAN``) share: the generative contract,
evaluation in the target domain, the linear LR policy and the DDP checks.

Contract (docs/architecture.md, "Generative modules"). A translation model is conditioned on an
image: ``sample(n, cond={"image": source (n, Cs, H, W)})`` translates the sources (the direction of
the sampling settings: ``a2b``, or ``b2a`` for CycleGAN). Without an ``image`` condition it
translates sources drawn from its ``examples_*`` buffers: E source images of the data's validation
set, stored at the start of fit and saved in the checkpoint, so ``predict``, the sample grids and
the contract tests work without the data; source j is drawn from the generator of sample j
(``paradigm.randint``), so sample i still depends on its seed alone. Sampling runs the generator in
eval mode (batch-norm running statistics; pix2pix's dropout off).

Evaluation (``validation_step`` / ``test_step``; docs/architecture.md, "Metric names"). Every
direction logs ``<stage>/l1`` and ``<stage>/psnr`` to the paired target (paired data), the cycle
reconstruction error (CycleGAN) and, with an ``extractor`` (``"mnist"``: the shipped domain
classifier, or a classifier checkpoint), ``<stage>/fid_<extractor>`` of the outputs against the real
images of the target domain in the same split, and ``<stage>/label_acc_<extractor>``: the share of
outputs the classifier assigns to the source's label (label preservation). CycleGAN suffixes each
key with its direction (``_a2b``, ``_b2a``).

Shape legend: B batch, C/H/W image, Cs source channels, E stored example sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio

from lit_genai import paradigm, sharding
from lit_genai.conditions import Cond, as_conditions
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.quality import QualityMetrics
from lit_genai.translation.losses import linear_decay

Direction = Literal["a2b", "b2a"]


@dataclass(frozen=True)
class TranslationSampling(paradigm.SamplingSettings):
    """Inference-time settings of a translation model (docs/architecture.md, "Sampling settings").

    Args:
        direction: ``a2b`` translates domain A (pix2pix: the source) to B; ``b2a`` the other way
            (CycleGAN only).
    """

    direction: Direction = "a2b"


class TranslationModule(LightningModule):
    """Base of ``Pix2Pix`` and ``CycleGAN`` (module docstring); subclasses set the generators."""

    modality = "image"
    conditions: tuple[str, ...] = ("image",)
    num_classes = 0  # labels are evaluation data (label preservation), never a condition
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step
    directions: tuple[Direction, ...] = ("a2b",)

    def _init_common(
        self,
        source_shape: Sequence[int],
        sample_shape: Sequence[int],
        num_examples: int,
        extractor: Optional[str],
        lr_constant_steps: int,
        lr_decay_steps: Optional[int],
        sampling: TranslationSampling,
    ) -> None:
        if len(source_shape) != 3 or len(sample_shape) != 3:
            raise ConfigError(
                f"{type(self).__name__} translates images (C, H, W); got source_shape={list(source_shape)} "
                f"and sample_shape={list(sample_shape)}"
            )
        if num_examples < 1:
            raise ConfigError(f"model.num_examples={num_examples} must be >= 1")
        if lr_constant_steps < 0 or (lr_decay_steps is not None and lr_decay_steps < 1):
            raise ConfigError(
                f"model.lr_constant_steps={lr_constant_steps} must be >= 0 and model.lr_decay_steps="
                f"{lr_decay_steps} >= 1 (or null: no decay)"
            )
        if sampling.direction not in self.directions:
            raise ConfigError(
                f"{type(self).__name__} translates {' and '.join(self.directions)} only, not "
                f"sampling.direction={sampling.direction!r}"
            )
        self.automatic_optimization = False
        self.source_shape = tuple(int(s) for s in source_shape)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.sampling = sampling
        self.extractor_name = extractor
        self._quality: dict[str, QualityMetrics] = {}  # per direction, rebuilt each evaluation
        self._extractor: dict[str, nn.Module] = {}  # loaded once; in a dict: no submodule, not in checkpoints
        shapes = {"a2b": self.source_shape, "b2a": self.sample_shape}
        for direction in self.directions:  # "examples_a": sources of a2b, "examples_b": of b2a
            self.register_buffer(f"examples_{direction[0]}", torch.zeros(num_examples, *shapes[direction]))

    # ------------------------------------------------------------------ subclasses
    def generator(self, direction: Direction) -> nn.Module:
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling
    def translate(self, source: Tensor, direction: Direction = "a2b") -> Tensor:
        """(B, Cs, H, W) sources in [-1, 1] -> (B, C, H, W) translations in [-1, 1], in eval mode."""
        net = self.generator(direction)
        with paradigm.eval_mode(net):
            return net(source.to(self.device)).clamp(-1, 1)

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Cond = None, generator: paradigm.Generators = None, **options: Any
    ) -> Tensor:
        """Translate ``cond["image"]`` (n, Cs, H, W), or n stored example sources drawn from
        ``generator`` (module docstring); ``options``: ``TranslationSampling`` fields (``direction``)."""
        settings = self.sampling.replace(**options)
        if settings.direction not in self.directions:
            raise ConfigError(f"{type(self).__name__} has no direction {settings.direction!r}")
        source = as_conditions(cond, self.conditions, f"{type(self).__name__}.sample()").get("image")
        if source is None:
            examples = getattr(self, f"examples_{settings.direction[0]}")  # (E, Cs, H, W)
            rows = paradigm.randint(examples.shape[0], n, generator, self.device)  # (n,)
            source = examples[rows]
        elif source.shape[0] != n:
            raise ConfigError(f"sample({n}) got {source.shape[0]} source images: give one per sample")
        return self.translate(source, settings.direction)

    def on_fit_start(self) -> None:
        """Store the first E validation (else training) items' sources as the ``examples_*`` buffers."""
        data = getattr(self.trainer, "datamodule", None)
        dataset = getattr(data, "val_set", None) or getattr(data, "train_set", None)
        if dataset is None or len(dataset) == 0:
            return
        for i, direction in enumerate(self.directions):  # item[0]: A / the source; item[1]: B
            buffer = getattr(self, f"examples_{direction[0]}")
            rows = [dataset[j % len(dataset)][i] for j in range(buffer.shape[0])]
            buffer.copy_(torch.stack(rows).to(buffer))

    # ------------------------------------------------------------------ optimisation helpers
    def _linear_schedulers(self, optimizers: list[torch.optim.Optimizer]) -> Any:
        """Constant LR for ``lr_constant_steps`` optimiser steps, then linear to 0 over ``lr_decay_steps``
        (each optimiser steps once per batch); the hyperparameters are read at every step."""

        def factor(step: int) -> float:
            return linear_decay(step, self.hparams.lr_constant_steps, self.hparams.lr_decay_steps)

        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
        names = ["lr-generator", "lr-discriminator"]
        return optimizers, [
            {"scheduler": s, "interval": "step", "name": name}
            for s, name in zip(schedulers, names, strict=True)
        ]

    def _step_schedulers(self) -> None:
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()

    # The optimiser that steps last in a batch (0: the generators', 1: the discriminators').
    last_optimizer = 1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the batch's last backward pass only: a graph still to be backpropagated (pix2pix's
        # G(source), built before the discriminator's step) saved the running statistics, which an
        # in-place update would invalidate.
        if optimizer is self.trainer.optimizers[self.last_optimizer]:
            self._average_batch_norm_statistics()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            sharding.refuse_sharded(
                self.trainer,
                f"{type(self).__name__}",
                "its optimisers step parts of one sharded module",
                "train it with --trainer.strategy ddp_find_unused_parameters_true",
            )
        strategy = self.trainer.strategy
        if stage != "fit" or not isinstance(strategy, DDPStrategy):
            return
        if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters"):
            raise ConfigError(
                f"{type(self).__name__} leaves the discriminators' parameters unused in the generator's "
                "backward pass and the generators' in the discriminators', which DDP only accepts with "
                "unused-parameter detection: use --trainer.strategy ddp_find_unused_parameters_true"
            )

    def _average_batch_norm_statistics(self) -> None:
        """Under DDP, average batch-norm running statistics over the ranks (as ``gan.GAN`` does: DDP's
        ``broadcast_buffers`` would leave every rank, and the checkpoint, with rank 0's)."""
        if self.trainer.world_size < 2:
            return
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
        stats = [
            buffer
            for m in self.modules()
            if isinstance(m, norms) and m.track_running_stats
            for buffer in (m.running_mean, m.running_var)
        ]
        if not stats:
            return
        flat = self.trainer.strategy.reduce(torch.cat([s.flatten() for s in stats]), reduce_op="mean")
        with torch.no_grad():
            for s, part in zip(stats, flat.split([s.numel() for s in stats]), strict=True):
                s.copy_(part.view_as(s))

    # ------------------------------------------------------------------ evaluation
    def _score(
        self,
        stage: str,
        suffix: str,
        output: Tensor,
        target: Optional[Tensor],
        labels: Optional[Tensor],
        reals: Tensor,
    ) -> None:
        """Log L1 / PSNR to a paired target and feed FID / label preservation of one direction."""
        if target is not None:
            l1 = (output - target).abs().flatten(1).mean(1)  # (B,)
            # PSNR per image on [-1, 1] (data range 2), averaged over the images
            psnr = peak_signal_noise_ratio(output, target, data_range=2.0, reduction="none", dim=(1, 2, 3))
            self.log(f"{stage}/l1{suffix}", l1.mean(), sync_dist=True)
            self.log(f"{stage}/psnr{suffix}", psnr.mean(), sync_dist=True)
        if self.extractor_name is None:
            return
        quality = self._quality.get(suffix)
        if quality is None:
            if not self._extractor:
                self._extractor["net"] = get_extractor(self.extractor_name)
            extractor = self._extractor["net"]
            conditional = labels is not None and int(extractor.num_classes) > 0
            quality = QualityMetrics(extractor, ("fid",), conditional=conditional).to(self.device)
            self._quality[suffix] = quality
        quality.update_real(to_uint8(reals))
        quality.update_fake(to_uint8(output), labels=labels if quality.conditional else None)

    def _log_quality(self, stage: str) -> None:
        """Compute (a collective under DDP) and log FID and label preservation of every direction."""
        for suffix, quality in sorted(self._quality.items()):
            for key, value in quality.compute().items():
                key = key.replace("cond_acc_", "label_acc_")
                self.log(f"{stage}/{key}{suffix}", value, sync_dist=True, reduce_fx="max")
        self._quality = {}

    def on_validation_epoch_end(self) -> None:
        self._log_quality("val")

    def on_test_epoch_end(self) -> None:
        self._log_quality("test")
