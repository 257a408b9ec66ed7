"""Run by tests/test_evaluation.py: a 2-process CPU (gloo) DDP test with the Evaluation callback.

Every rank writes the metrics it computed to ``<out>/rank<r>.json``; the test checks that both
ranks finished (nobody hung) and agree. Usage: python ddp_evaluation_script.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from helpers import tiny_conditional_diffusion
from lightning.pytorch import Trainer

from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.data import MNIST5k


def main(out: Path) -> None:
    torch.set_num_threads(1)
    module = tiny_conditional_diffusion()
    evaluation = Evaluation(
        num_samples=30, batch_size=8, num_real=60, cache_dir=str(out / "cache"), metrics=("fid", "is", "pr")
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
        default_root_dir=str(out),
        callbacks=[evaluation],
    )
    trainer.test(module, datamodule=MNIST5k(batch_size=16), verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (out / f"rank{trainer.global_rank}.json").write_text(
        json.dumps({"metrics": metrics, "protocol": evaluation.last_protocol})
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
