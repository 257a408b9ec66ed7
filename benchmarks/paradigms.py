"""Every image paradigm on the bundled MNIST digits at the same training budget.

What it measures
    Each paradigm's MNIST recipe under ``experiments/`` (diffusion, EDM, flow matching, latent
    diffusion, DCGAN, conditional DCGAN, VAE, Gated PixelCNN, MaskGIT), unchanged but stopped after
    ``--budget-min`` minutes of CPU time of its training process with one torch thread
    (``CPUBudget``): the wall-clock time of one idle core, whatever else the machine runs.
    Validation counts, as a user's run spends it; a recipe that ends sooner keeps its own length;
    learning-rate schedules are the recipes' (a cut run stops part-way down its decay). Latent
    diffusion and MaskGIT start from their first stage (``runs/vae-autoencoder_mnist``,
    ``runs/vae-vqvae_mnist``), trained beforehand and not counted in the budget. Checkpoints are
    kept at equal fractions of the budget (``--points``); each is scored by ``lit-genai test`` with
    ``--samples`` generated images (FID_mnist, IS_mnist, precision / recall, cond_acc_mnist for
    conditional models, bits per dimension where the paradigm defines a likelihood), from which the
    table takes the last and the plot all. Sampling seconds per 100 images: CPU time of
    ``lit_genai.generate(module, 100)`` with the recipe's sampler, after a 4-image warm-up.
    Parameters: every weight of the module (a GAN's generator and discriminator; latent models
    without their frozen first stage).

    Training runs ``--parallel`` at a time, one torch thread each; state the machine with the numbers.

How to run
    lit-genai fit --config experiments/vae/autoencoder_mnist.yaml   # first stages (not budgeted)
    lit-genai fit --config experiments/vae/vqvae_mnist.yaml
    python benchmarks/paradigms.py run --budget-min 8 --parallel 2 --samples 500
    python benchmarks/paradigms.py report        # table (markdown), docs/paradigms_grid.png,
                                                 # docs/paradigms_fid_vs_minutes.png
    python benchmarks/paradigms.py run --only vae dcgan --budget-min 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
# name -> (experiment, label shown, conditional)
PARADIGMS = {
    "diffusion": ("diffusion/mnist.yaml", "diffusion (UNet, v-pred., DPM-Solver++ 20)", True),
    "edm": ("diffusion/edm_mnist.yaml", "EDM (Heun 18)", True),
    "flow": ("diffusion/flow_mnist.yaml", "flow matching (Euler 50)", True),
    "latent_diffusion": ("diffusion/latent_mnist.yaml", "latent diffusion (KL f4)", True),
    "dcgan": ("gan/dcgan_mnist.yaml", "DCGAN", False),
    "dcgan_cond": ("gan/dcgan_mnist_cond.yaml", "conditional DCGAN", True),
    "vae": ("vae/mnist.yaml", "VAE (MLP)", False),
    "pixelcnn": ("ar/pixelcnn_mnist.yaml", "Gated PixelCNN (binarised)", False),
    "maskgit": ("masked/maskgit_mnist.yaml", "MaskGIT (VQ tokens)", True),
}


# ---------------------------------------------------------------------- one paradigm (a subprocess)


class CPUBudget(Callback):
    """Stop training after ``minutes`` of this process's CPU time, and save a checkpoint at each of
    ``points - 1`` equal fractions of it. CPU time, not wall-clock time: with one torch thread it
    is the wall-clock time of an idle core, and it does not depend on what else the machine runs
    (``time.process_time``; data loading in the main process and validation count)."""

    def __init__(self, minutes: float, points: int, folder: Path) -> None:
        self.budget, self.points, self.folder = minutes * 60, points, folder
        self.start, self.saved, self.used = 0.0, 1, 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.used = time.process_time() - self.start
        while self.saved < self.points and self.used >= self.budget * self.saved / self.points:
            trainer.save_checkpoint(self.folder / f"budget-step={trainer.global_step}.ckpt")
            self.saved += 1
        if self.used >= self.budget:
            trainer.should_stop = True


def fit_one(name: str, out: Path, budget_min: float, points: int) -> None:
    """Train ``name`` for the budget, keeping checkpoints at each fraction; then time sampling and
    save 10 samples for the grid. Writes ``<out>/<name>/fit.json``."""
    import torch

    import lit_genai
    from lit_genai.cli import LitGenAICLI

    experiment, _, conditional = PARADIGMS[name]
    folder = out / name
    args = [
        "--config",
        str(ROOT / "experiments" / experiment),
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(folder),
    ]
    cli = LitGenAICLI(args=args, run=False)
    budget = CPUBudget(budget_min, points, folder / "checkpoints")  # where lit_genai.load finds the run
    cli.trainer.callbacks.append(budget)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = (time.perf_counter() - start) / 60
    final = folder / "checkpoints" / "budget-final.ckpt"
    cli.trainer.save_checkpoint(final)
    module = lit_genai.load(final)
    cond = list(range(10)) if conditional else None
    lit_genai.generate(module, 4, seed=1, cond=None if cond is None else cond[:4])
    begin = time.process_time()  # CPU time, as the budget
    lit_genai.generate(module, 100, seed=0, cond=None if cond is None else [i % 10 for i in range(100)])
    sample_s = time.process_time() - begin
    grid = lit_genai.generate(module, 10, seed=0, cond=cond)  # uint8 (10, 1, 28, 28)
    torch.save(grid, folder / "grid.pt")
    params = sum(p.numel() for p in module.parameters()) - sum(
        p.numel()
        for n, p in module.named_parameters()
        if n.startswith(("autoencoder.", "first_stage.", "tokenizer."))
    )
    steps = {int(p.stem.split("=")[1]): p for p in (folder / "checkpoints").glob("budget-step=*.ckpt")}
    checkpoints = [steps[k] for k in sorted(steps)] + [final]
    info = {
        "name": name,
        "fit_minutes": budget.used / 60,  # CPU minutes
        "wall_minutes": wall,
        "global_step": cli.trainer.global_step,
        "sample_s_per_100": sample_s,
        "parameters": params,
        "checkpoints": [str(p) for p in checkpoints],
    }
    (folder / "fit.json").write_text(json.dumps(info, indent=2))


def test_one(name: str, checkpoint: Path, out: Path, samples: int) -> dict:
    """``lit-genai test`` of one checkpoint: the test JSON's metrics."""
    experiment = PARADIGMS[name][0]
    command = [
        sys.executable,
        "-m",
        "lit_genai",
        "test",
        "--config",
        str(ROOT / "experiments" / experiment),
        "--ckpt_path",
        str(checkpoint),
        "--trainer.default_root_dir",
        str(out / name / "test"),
        "--trainer.logger",
        "false",
        "--evaluation.num_samples",
        str(samples),
    ]
    log = out / name / f"test-{checkpoint.stem}.log"
    with open(log, "w") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    if done.returncode != 0:
        return {"error": f"lit-genai test exited {done.returncode}: see {log}"}
    result = json.loads(checkpoint.with_suffix(".test.json").read_text())  # written beside it
    return {k.removeprefix("test/"): v for k, v in result["metrics"].items()}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


# ---------------------------------------------------------------------- the sweep


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    names = args.only or list(PARADIGMS)

    def one(name: str) -> None:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "fit", name, "--out", str(out)]
        command += ["--budget-min", str(args.budget_min), "--points", str(args.points)]
        with open(folder / "fit.log", "w") as stream:
            subprocess.run(
                command, stdout=stream, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, check=False
            )
        info_path = folder / "fit.json"
        if not info_path.is_file():
            print(f"{name}: fit failed, see {folder / 'fit.log'}", flush=True)
            return
        info = json.loads(info_path.read_text())
        info["tests"] = [test_one(name, Path(c), out, args.samples) for c in info["checkpoints"]]
        info["samples"] = args.samples
        info["budget_min"] = args.budget_min
        info_path.write_text(json.dumps(info, indent=2))
        print(f"{name}: done ({info['global_step']} steps)", flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, names))


# ---------------------------------------------------------------------- the report


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    out = Path(args.out)
    rows = []
    for name, (_, label, conditional) in PARADIGMS.items():
        path = out / name / "fit.json"
        if not path.is_file():
            continue
        info = json.loads(path.read_text())
        rows.append((name, label, conditional, info))
    if not rows:
        sys.exit(f"no results under {out}: run `python benchmarks/paradigms.py run` first")
    budget, samples = rows[0][3]["budget_min"], rows[0][3]["samples"]
    print(
        f"| paradigm | FID_mnist | IS | precision / recall | cond_acc | bits/dim | steps in {budget:g} min "
        "| sampling s / 100 | parameters |\n|---|---|---|---|---|---|---|---|---|"
    )
    for _, label, _, info in rows:
        print(f"| {label} | " + " | ".join(table_cells(info)) + " |")
    print(f"\n{samples} generated images per FID, against the bundled MNIST training digits.")
    docs = ROOT / "docs"
    fig, axes = plt.subplots(len(rows), 1, figsize=(5, 0.62 * len(rows)), dpi=110, squeeze=False)
    for ax, (name, label, _, _) in zip(axes[:, 0], rows, strict=True):
        grid = torch.load(out / name / "grid.pt")  # (10, 1, 28, 28) uint8
        ax.imshow(torch.cat(list(grid[:, 0]), dim=1).numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "paradigms_grid.png")
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    for _, label, _, info in rows:
        points = len(info["tests"])
        minutes = [info["budget_min"] * (i + 1) / points for i in range(points - 1)] + [info["fit_minutes"]]
        fids = [t.get("fid_mnist") for t in info["tests"]]
        kept = [(x, y) for x, y in zip(minutes, fids, strict=True) if y is not None]
        if kept:
            ax.plot(*zip(*kept, strict=True), marker="o", label=label)
    ax.set_xlabel("training minutes (CPU time, 1 thread)")
    ax.set_ylabel(f"FID_mnist ({samples} samples)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(docs / "paradigms_fid_vs_minutes.png")
    print(f"wrote {docs / 'paradigms_grid.png'} and {docs / 'paradigms_fid_vs_minutes.png'}")


def table_cells(info: dict) -> list[str]:
    """A paradigm's row after its label: the final checkpoint's scores, steps, sampling, size."""
    m = info["tests"][-1]

    def cell(key: str, form: str = "{:.2f}") -> str:
        return form.format(m[key]) if key in m else "—"

    return [
        cell("fid_mnist"),
        cell("is_mnist"),
        f"{cell('precision_mnist')} / {cell('recall_mnist')}",
        cell("cond_acc_mnist", "{:.3f}"),
        cell("bpd", "{:.3f}"),
        f"{info['global_step']:,}",
        f"{info['sample_s_per_100']:.2f}",
        f"{info['parameters']:,}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and score every paradigm")
    p_run.add_argument("--only", nargs="+", choices=list(PARADIGMS))
    p_fit = sub.add_parser("fit", help="train one paradigm (what `run` starts per paradigm)")
    p_fit.add_argument("name", choices=list(PARADIGMS))
    for p in (p_run, p_fit):
        p.add_argument("--out", default="runs/paradigms")
        p.add_argument("--budget-min", type=float, default=8.0)
        p.add_argument("--points", type=int, default=3, help="checkpoints scored along the budget")
    p_run.add_argument("--parallel", type=int, default=2)
    p_run.add_argument("--samples", type=int, default=500)
    p_report = sub.add_parser("report", help="table and figures from a finished run")
    p_report.add_argument("--out", default="runs/paradigms")
    args = parser.parse_args()
    if args.command == "fit":
        fit_one(args.name, Path(args.out), args.budget_min, args.points)
    elif args.command == "run":
        run(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
