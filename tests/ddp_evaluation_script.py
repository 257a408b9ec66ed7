"""A 2-process CPU (gloo) DDP run of the Evaluation callback, for tests/test_evaluation.py.

Also home of ``RealDigits``, the stand-in class-conditional generator the evaluation tests use: it
keeps the generative-module contract (``lit_genai.paradigm``) and "samples" real MNIST5k
digits, so its numbers are known (FID near that of real data, conditioning accuracy near the
classifier's accuracy) and it costs nothing to run.

``run(out)`` forks the two ranks from the calling process (``DDPStrategy(start_method="fork")``):
they inherit its imports, so the run takes seconds instead of the half minute two fresh
interpreters spend importing torch and Lightning. ``python ddp_evaluation_script.py OUT_DIR`` runs
the same evaluation with the subprocess launcher the CLI uses (``strategy="ddp"``).

Every rank writes the metrics it logged and the protocol to ``<out>/rank<r>.json``, and the images
and labels it generated to ``<out>/rank<r>.pt``; the test checks that both ranks finished (nobody
hung), agree, and equal a single-process computation on the union of the generated images.
"""

import json
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.data import MNIST5k
from lit_genai.media import to_uint8

NUM_SAMPLES, NUM_REAL, BATCH_SIZE = 30, 60, 8
METRICS = ("fid", "kid", "is", "pr")


@dataclass(frozen=True)
class DigitSampling(paradigm.SamplingSettings):
    """``ignore_labels``: draw digits of random classes whatever label was asked for."""

    ignore_labels: bool = False


class RealDigits(LightningModule):
    """A class-conditional "generator" whose samples are real MNIST5k digits (1x28x28).

    Sample i is a digit of class ``cond[i]`` (of a random class when ``ignore_labels`` or without
    ``cond``), picked with ``generator``, so the same seed gives the same images. The digits are the
    validation split, apart from the training split (the evaluation's reference) and the test split
    (CAS's). ``drawn`` keeps every (uint8 images, labels asked for) batch it returned.

    Args:
        num_classes: 10 (class-conditional) or 0 (unconditional: every class at random).
        ignore_labels: Draw digits of random classes whatever label was asked for, like a
            generator that ignores its conditioning.
    """

    modality = "image"
    ema_target = None  # EMA averages the whole module (its one parameter)
    sampling_settings = paradigm.sampling_settings

    def __init__(self, num_classes: int = 10, ignore_labels: bool = False) -> None:
        super().__init__()
        data = MNIST5k()
        data.setup()
        x, y = data.val_set.tensors  # (500, 1, 28, 28) in [-1, 1], (500,)
        order = y.argsort(stable=True)
        self.bank, counts = x[order], torch.bincount(y, minlength=10)  # digits sorted by class
        self.counts, self.starts = counts, counts.cumsum(0) - counts  # (10,) each
        self.num_classes = num_classes
        self.conditions = paradigm.conditions_of(num_classes)
        self.sampling = DigitSampling(ignore_labels=ignore_labels)
        self.scale = nn.Parameter(torch.ones(()))  # something to train and to average
        self.drawn: list[tuple[Tensor, Tensor]] = []

    def sample(
        self,
        n: int,
        *,
        cond: Optional[Tensor] = None,
        generator: paradigm.Generators = None,
        **options: Any,
    ) -> Tensor:
        ignore = self.sampling.replace(**options).ignore_labels
        if cond is not None and not ignore:
            classes = cond.cpu()
        else:
            classes = paradigm.randint(10, n, generator, torch.device("cpu"))  # (n,)
        uniform = torch.special.ndtr(paradigm.randn((n,), generator, torch.device("cpu")))  # (n,) in (0, 1)
        pick = (uniform * self.counts[classes]).long()  # (n,)
        images = self.bank[self.starts[classes] + pick].to(self.device)  # (n, 1, 28, 28)
        images = images * self.scale.detach()  # (the parameter EMA averages is 1 unless trained)
        asked = cond.cpu() if cond is not None else classes
        self.drawn.append((to_uint8(images).cpu(), asked))
        return images

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return (self.scale - 1) ** 2 + 0 * batch[0].mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def test_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WriteRankResults(Callback):
    """At the end of ``test``, write this rank's logged metrics, protocol and generated images."""

    def __init__(self, out: Path, evaluation: Evaluation) -> None:
        self.out, self.evaluation = out, evaluation

    def on_test_end(self, trainer: Trainer, pl_module: RealDigits) -> None:
        rank = trainer.global_rank
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        payload = {"metrics": metrics, "protocol": self.evaluation.last_protocol}
        (self.out / f"rank{rank}.json").write_text(json.dumps(payload))
        images, labels = (torch.cat(parts) for parts in zip(*pl_module.drawn, strict=True))
        torch.save({"images": images, "labels": labels}, self.out / f"rank{rank}.pt")


def run(out: Path, start_method: str = "fork") -> None:
    """Evaluate ``RealDigits`` on two CPU ranks; ``start_method`` of ``DDPStrategy`` ("popen" = the CLI's)."""
    torch.set_num_threads(1)
    module = RealDigits()
    evaluation = Evaluation(
        num_samples=NUM_SAMPLES,
        batch_size=BATCH_SIZE,
        num_real=NUM_REAL,
        cache_dir=str(out / "cache"),
        metrics=METRICS,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        # a rank stuck in a collective raises after a minute instead of hanging the test session
        strategy=DDPStrategy(start_method=start_method, timeout=timedelta(seconds=60)),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
        default_root_dir=str(out),
        callbacks=[evaluation, WriteRankResults(out, evaluation)],
    )
    trainer.test(module, datamodule=MNIST5k(batch_size=16), verbose=False)


if __name__ == "__main__":
    run(Path(sys.argv[1]), start_method="popen")
