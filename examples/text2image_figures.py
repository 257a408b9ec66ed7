"""The text-to-image figures of the README: a caption grid and a guidance sweep.

    # captions (rows) x seeds (columns), each caption printed beside its row
    python examples/text2image_figures.py grid runs/diffusion-text2image_shapes docs/text2image_grid.png \
        --caption "a small red circle at the top left on a blue background" --caption ... --seeds 8

    # attribute accuracy and FID against the guidance weight w: one `lit-genai test` per w, then a plot
    python examples/text2image_figures.py sweep --config experiments/diffusion/text2image_shapes.yaml \
        --ckpt_path last --extractor <attribute classifier checkpoint> --w 0 1 3 5 \
        --out docs/text2image_guidance.png

The grid draws row r's image j from the generator seed + j (``lit_genai.generate``), so a column
shares its noise across captions. The sweep runs the command line's own ``test`` (the Evaluation
callback: samples for the evaluation split's captions and for the held-out combinations) with
``--evaluation.sampling.guidance_scale w`` and keeps each test JSON beside the plot
(``<out stem>_w<w>.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lit_genai import generate, load  # noqa: E402


def grid(
    run: str, out: str, captions: list[str], held_out: list[str], seeds: int, seed: int, options: dict
) -> None:
    module = load(run)
    captions = captions + held_out
    rows = [generate(module, seeds, seed=seed, cond={"text": [c] * seeds}, **options) for c in captions]
    fig, axes = plt.subplots(
        len(rows),
        seeds + 1,
        figsize=(1.1 * seeds + 3.3, 1.1 * len(rows)),
        squeeze=False,
        gridspec_kw={"width_ratios": [3] + [1] * seeds},
    )
    for r, (caption, images) in enumerate(zip(captions, rows, strict=True)):
        label = ("[held out] " if caption in held_out else "") + caption
        axes[r, 0].text(0.0, 0.5, textwrap.fill(label, 40), ha="left", va="center", fontsize=7)
        for j in range(seeds + 1):
            axes[r, j].axis("off")
        for j, image in enumerate(images):
            axes[r, j + 1].imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    fig.subplots_adjust(left=0.01, right=1.0, top=1.0, bottom=0.0, wspace=0.05, hspace=0.05)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def sweep(
    config: str, ckpt_path: str, extractor: str, weights: list[float], out: str, extra: list[str]
) -> None:
    results = {}
    stem = Path(out).with_suffix("")
    for w in weights:
        command = [
            sys.executable,
            "-m",
            "lit_genai.cli",
            "test",
            "--config",
            config,
            "--ckpt_path",
            ckpt_path,
        ]
        command += [
            "--evaluation.extractor",
            extractor,
            "--evaluation.sampling",
            json.dumps({"guidance_scale": w}),
        ]
        subprocess.run(command + extra, check=True)
        if Path(ckpt_path).is_file():  # the test JSON is written next to the checkpoint
            written = Path(ckpt_path).with_suffix(".test.json")
        else:  # "last" / "best": the newest in the run folders
            written = max(Path("runs").glob("*/checkpoints/*.test.json"), key=lambda p: p.stat().st_mtime)
        kept = Path(f"{stem}_w{w:g}.json")
        shutil.copy(written, kept)
        results[w] = json.loads(kept.read_text())["metrics"]
    name = Path(extractor).stem
    keys = {
        f"test/attr_acc_{name}": "attribute accuracy, seen combinations",
        f"test/attr_acc_heldout_{name}": "attribute accuracy, held-out combinations",
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for key, label in keys.items():
        left.plot(weights, [results[w].get(key) for w in weights], "o-", label=label)
    left.set(xlabel="guidance weight w", ylabel="attribute accuracy", ylim=(0, 1.02))
    left.legend(fontsize=7)
    right.plot(weights, [results[w].get(f"test/fid_{name}") for w in weights], "o-")
    right.set(xlabel="guidance weight w", ylabel=f"FID ({name} features)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(
        json.dumps(
            {str(w): {k: results[w].get(k) for k in [*keys, f"test/fid_{name}"]} for w in weights}, indent=1
        )
    )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("grid")
    g.add_argument("run")
    g.add_argument("out")
    g.add_argument("--caption", action="append", required=True)
    g.add_argument(
        "--held_out", action="append", default=[], help="captions of held-out combinations (marked)"
    )
    g.add_argument("--seeds", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance_scale", type=float, default=None)
    s = commands.add_parser("sweep")
    s.add_argument("--config", required=True)
    s.add_argument("--ckpt_path", default="last")
    s.add_argument("--extractor", required=True)
    s.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 3.0, 5.0])
    s.add_argument("--out", required=True)
    args, extra = parser.parse_known_args()
    if args.command == "grid":
        options = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
        grid(args.run, args.out, args.caption, args.held_out, args.seeds, args.seed, options)
    else:
        sweep(args.config, args.ckpt_path, args.extractor, args.w, args.out, extra)


if __name__ == "__main__":
    main()
