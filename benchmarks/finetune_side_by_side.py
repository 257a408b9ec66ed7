"""Fine-tuning runs of one prompt/response task side by side: task scores on the training prompts
(what the run memorised) and on the held-out test prompts, and the weights each run trained.

What it measures
    For each run folder (``lit-genai fit`` output, e.g. full fine-tuning and LoRA of
    ``experiments/ar/finetune_topics_qa*.yaml``): the module is loaded (``lit_genai.load``: LoRA
    adapters merged for sampling), its data module rebuilt from the run's ``config.yaml``, and every
    prompt of each split answered greedily, cut at the template's stop
    (``ar.task_evaluation.evaluate_task``, as ``lit-genai test`` does for the test split): exact
    match, chrF, BLEU, ROUGE-L, all in [0, 1]. Trainable parameters: the LoRA adapters' when the
    run used LoRA, else every weight of the net. One table, one row per run and split.

How to run
    lit-genai fit --config experiments/ar/text_demo.yaml
    lit-genai fit --config experiments/ar/finetune_topics_qa.yaml
    lit-genai fit --config experiments/ar/finetune_topics_qa_lora.yaml
    OMP_NUM_THREADS=1 python benchmarks/finetune_side_by_side.py \
        runs/ar-finetune_topics_qa runs/ar-finetune_topics_qa_lora
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch
import yaml

import lit_genai
from lit_genai.ar.task_evaluation import evaluate_task


def data_of(run: Path):
    """The run's data module, rebuilt from its saved config (paths relative to the working folder)."""
    config = yaml.safe_load((run / "config.yaml").read_text())["data"]
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config.get("init_args", {}))


def trained_weights(module) -> int:
    """The parameters the run optimised: LoRA adapters only, or the whole net."""
    if module.hparams.get("lora"):
        return sum(p.numel() for n, p in module.net.named_parameters() if ".lora_" in n)
    return sum(p.numel() for p in module.net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of lit-genai fit")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "val", "test"])
    parser.add_argument("--max_new_tokens", type=int, default=200)
    args = parser.parse_args()
    print(
        "| run | trained weights | split | examples | exact match | chrF | BLEU | ROUGE-L |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for run in args.runs:
        module = lit_genai.load(run)
        data = data_of(run)
        for split in args.splits:
            examples = data.task_examples(split)
            scores, _ = evaluate_task(
                module,
                examples,
                args.max_new_tokens,
                stop=(data.template.stop,),
                encode=lambda text, data=data: data.encode(text).tolist(),
                decode=lambda ids, data=data: data.decode(torch.tensor([list(ids)], dtype=torch.long))[0],
            )
            cells = [scores[k] for k in ("exact_match", "chrf", "bleu", "rougeL")]
            print(
                f"| {run.name} | {trained_weights(module):,} | {split} | {len(examples)} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + " |"
            )


if __name__ == "__main__":
    main()
