"""Sample quality against sampling cost: FID of a trained diffusion model for each sampler and NFE.

What it measures
    For a ``lit-genai fit`` checkpoint of ``lit_genai.diffusion.Diffusion`` (EMA weights when the
    checkpoint has them, as ``lit-genai test`` uses), FID (``lit_genai.metrics.quality.QualityMetrics``
    with the data's feature extractor, ``mnist`` for MNIST) of ``--num-samples`` generated images
    against the features of ``--num-real`` real training images (the cached features of
    ``lit_genai.metrics.cache.real_features``), for each (sampler, NFE) of ``--grid``:

    - ``ddpm``: ancestral sampling; NFE = T (1000) is DDPM itself, a smaller NFE strides over the
      timesteps with DDIM at eta = 1 (the ancestral variant of Song et al. 2021, Table 1);
    - ``ddim``: deterministic DDIM (eta = 0), NFE = steps;
    - ``euler`` / ``dpm_solver++`` (DPM-Solver++(2M)): the Karras sigma grid (rho = 7), NFE = steps;
    - ``heun`` (EDM Algorithm 1): steps = (NFE + 1) // 2, NFE = 2 steps - 1 (the NFE column is the
      exact count).

    NFE counts network evaluations per image; with classifier-free guidance each is one batched
    call of both branches (twice the work). Sample i uses the generator seed + i and, for a
    class-conditional model, the label i mod K, so every row is drawn from the same noise and labels.
    It writes ``<out>.csv``, ``<out>.md`` (the table) and ``<out>.png`` (FID against NFE, log x).

How to run
    # the full grid (hours on a CPU; minutes on a GPU):
    python benchmarks/fid_vs_nfe.py --ckpt runs/diffusion-mnist/checkpoints/last.ckpt \\
        --num-samples 10000 --device cuda
    # the grid split over two processes (one per core), then one table and plot of both:
    python benchmarks/fid_vs_nfe.py --grid ddim:10,20,50 --threads 1 --out runs/fid_vs_nfe/a &
    python benchmarks/fid_vs_nfe.py --grid dpm_solver++:10,20 heun:10,20 --threads 1 --out runs/fid_vs_nfe/b
    python benchmarks/fid_vs_nfe.py --merge runs/fid_vs_nfe/a.csv runs/fid_vs_nfe/b.csv \
        --num-samples 1000 --out runs/fid_vs_nfe/fid_vs_nfe
    # (the README table: the demo checkpoint with --guidance-scale 0 and --num-samples 1000)
    # a quick check of the script:
    python benchmarks/fid_vs_nfe.py --ckpt runs/diffusion-mnist/checkpoints/last.ckpt \\
        --num-samples 64 --grid ddim:10,20 dpm_solver++:10,20 --threads 1

How to read it
    FID falls as the number of samples grows: compare rows only at the same ``--num-samples`` (and
    the same reference). A few-step solver is good when its FID at 10-20 NFE comes close to DDPM's at
    1000. With few samples (64) FID is dominated by its small-sample bias: the script then shows that
    it runs, not which sampler is better.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lit_genai import paradigm
from lit_genai.callbacks.ema import load_for_evaluation
from lit_genai.data import MNIST5k
from lit_genai.diffusion import Diffusion
from lit_genai.media import to_uint8
from lit_genai.metrics.cache import real_features
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.quality import QualityMetrics

FULL_GRID = ("ddpm:1000", "ddim:10,20,50,100", "dpm_solver++:10,20,50,100", "heun:10,20,50,100")
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpm_solver++")


def parse_grid(entries: list[str], num_timesteps: int) -> list[tuple[str, int, int]]:
    """["ddim:10,20", ...] -> [(sampler, steps, exact NFE), ...]."""
    runs = []
    for entry in entries:
        sampler, _, values = entry.partition(":")
        if sampler not in SAMPLERS or not values:
            raise SystemExit(f"--grid entry {entry!r}: write SAMPLER:NFE[,NFE...] with SAMPLER in {SAMPLERS}")
        for nfe in (int(v) for v in values.split(",")):
            if sampler == "ddpm":
                steps = min(nfe, num_timesteps)  # below T: strided ancestral steps (DDIM eta = 1)
                runs.append((sampler, steps, steps))
            elif sampler == "heun":
                steps = max(1, (nfe + 1) // 2)
                runs.append((sampler, steps, 2 * steps - 1))
            else:
                runs.append((sampler, nfe, nfe))
    return list(dict.fromkeys(runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", default="runs/diffusion-mnist/checkpoints/last.ckpt")
    parser.add_argument("--grid", nargs="+", default=list(FULL_GRID), help="SAMPLER:NFE[,NFE...] entries")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--num-real", type=int, default=4000, help="real images (MNIST5k train has 4000)")
    parser.add_argument("--extractor", default="mnist")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="default: the run's (model.init_args.sampling.guidance_scale of the config.yaml beside "
        "checkpoints/)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA average")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--channels-last", action="store_true", help="channels-last network weights")
    parser.add_argument("--out", default="runs/fid_vs_nfe/fid_vs_nfe", help="prefix of the .csv/.md/.png")
    parser.add_argument(
        "--sigma-max",
        default=None,
        help="top of the solvers' sigma grid: a number, or 'schedule' for sigma of step T - 1 "
        "(default: the module's, 80)",
    )
    parser.add_argument("--merge", nargs="+", help="combine the .csv files of earlier runs into --out")
    args = parser.parse_args()
    if args.merge:
        rows = []
        for path in args.merge:
            with open(path, newline="") as f:
                rows += [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        header = f"FID of {args.num_samples} samples per row, merged from {', '.join(args.merge)}\n\n"
        write_outputs(rows, Path(args.out), header, f"FID ({args.num_samples} samples)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    module = Diffusion.load_from_checkpoint(args.ckpt, map_location="cpu")
    ema = False if args.no_ema else load_for_evaluation(module, args.ckpt)
    module = module.to(device).eval()
    if args.channels_last:  # about 1.2x faster convolutions on a CPU; the same model
        module.net.to(memory_format=torch.channels_last)
    runs = parse_grid(args.grid, module.num_timesteps)
    # Sampling settings are not in the checkpoint's hyperparameters (docs/architecture.md, "Sampling
    # settings"), so the run's guidance comes from the config that lit-genai fit saved beside it.
    guidance = run_guidance(Path(args.ckpt)) if args.guidance_scale is None else args.guidance_scale
    settings = {"guidance_scale": guidance}
    if args.sigma_max is not None:
        settings["sigma_max"] = None if args.sigma_max == "schedule" else float(args.sigma_max)
    module.sampling = module.sampling.replace(**settings)
    top = float(module.sigma_grid(2)[0])  # the solvers' starting sigma

    data = MNIST5k(batch_size=args.batch_size)
    data.setup("fit")
    extractor = get_extractor(args.extractor)
    conditional = module.num_classes > 0 and int(extractor.num_classes) == module.num_classes
    quality = QualityMetrics(extractor, ("fid",), seed=args.seed, conditional=conditional).to(device)
    real = real_features(
        DataLoader(data.train_set, batch_size=args.batch_size, shuffle=False),
        quality.extractor,
        dataset="MNIST5k",
        split="train",
        num=args.num_real,
        key=data.identity(),
        progress=False,
    )
    quality.set_real_features(real)
    name = quality.extractor.name

    rows = []
    for sampler, steps, nfe in runs:
        quality.reset_fake()
        start = time.perf_counter()
        for first in range(0, args.num_samples, args.batch_size):
            index = list(range(first, min(first + args.batch_size, args.num_samples)))
            labels = torch.tensor(index) % module.num_classes if module.num_classes > 0 else None
            strided = sampler == "ddpm" and steps < module.num_timesteps
            # eta only for the strided ancestral runs (DDIM eta = 1); the module's own otherwise
            options = (
                dict(sampler="ddim", steps=steps, eta=1.0) if strided else dict(sampler=sampler, steps=steps)
            )
            images = module.sample(
                len(index), cond=labels, generator=paradigm.sample_generators(args.seed, index), **options
            )
            quality.update_fake(to_uint8(images), labels.to(device) if conditional else None)
        seconds = time.perf_counter() - start
        scores = quality.compute()
        row = dict(sampler=sampler, steps=steps, nfe=nfe, fid=round(scores[f"fid_{name}"], 3))
        row["sigma_max"] = round(top, 1) if sampler in ("euler", "heun", "dpm_solver++") else ""
        if conditional:
            row["cond_acc"] = round(scores[f"cond_acc_{name}"], 4)
        row["seconds"] = round(seconds, 1)
        rows.append(row)
        print(row, flush=True)

    guidance = module.sampling.guidance_scale
    header = (
        f"FID_{name} of {args.num_samples} samples vs {len(real)} real MNIST5k/train images; "
        f"checkpoint {args.ckpt} ({'EMA' if ema else 'raw'} weights), "
        f"guidance w = {guidance}, seed {args.seed}\n\n"
    )
    write_outputs(rows, Path(args.out), header, f"FID_{name} ({args.num_samples} samples)")


def run_guidance(ckpt: Path) -> float:
    """The guidance weight of the run that wrote ``ckpt`` (``<run>/checkpoints/x.ckpt``): its
    ``<run>/config.yaml``'s ``model.init_args.sampling.guidance_scale`` (or, in the run folders written
    before the sampling settings were one argument, ``model.init_args.guidance_scale``), else 0
    (``DiffusionSampling``'s default)."""
    import yaml

    config = ckpt.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return 0.0
    init_args = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("init_args") or {}
    sampling = init_args.get("sampling") or {}
    if isinstance(sampling, dict) and sampling.get("guidance_scale") is not None:
        return float(sampling["guidance_scale"])
    return float(init_args.get("guidance_scale") or 0.0)


def _number(text: str):
    """A CSV cell back as int or float where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_outputs(rows: list[dict], out: Path, header: str, ylabel: str) -> None:
    """``<out>.csv``, ``<out>.md`` (a header line and the table) and ``<out>.png`` (the curves)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    table += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    out.with_suffix(".md").write_text(header + "\n".join(table) + "\n")
    plot(rows, out.with_suffix(".png"), ylabel)
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))

    def curve(r: dict) -> str:
        top = r.get("sigma_max", "")
        if r["sampler"] == "ddpm":
            return "ddpm (ancestral; DDIM eta 1 strides below T)"
        return f"{r['sampler']} (sigma_max {top:g})" if top not in ("", None) else r["sampler"]

    for label in dict.fromkeys(curve(r) for r in rows):
        points = sorted((r["nfe"], r["fid"]) for r in rows if curve(r) == label)
        marker = "*" if len(points) == 1 else "o"
        ax.plot(
            *zip(*points, strict=True), marker=marker, label=label, linestyle="-" if len(points) > 1 else ""
        )
    ax.set_xscale("log")
    ax.set_yscale("log")  # FIDs span orders of magnitude between few-step and converged samplers
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)  # beside the curves
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
