"""Image to image with a trained MNIST diffusion model: inpainting and an SDEdit curve (README,
"Image to image").

    python examples/image_to_image.py runs/diffusion-mnist --out docs --name pixel
    python examples/image_to_image.py runs/diffusion-latent_mnist --out docs --name latent

Inpainting: the ``mask`` half (default the left) of each MNIST5k test digit is filled by the
replacement method and by RePaint (Lugmayr et al. 2022) with the model's own sampler, unconditionally
(the null label: the model is not told the digit). Scored by the MNIST domain classifier
(``lit_genai.metrics``' ``mnist`` extractor, the weights experiments/eval/mnist_classifier.yaml
exports; ``--classifier`` takes another export): its accuracy on the completed digits against the
originals' labels, and FID of its features between the completed digits and the originals. Baselines:
the originals, and the known half alone (the rest black).

SDEdit (Meng et al. 2022): sources from another domain, scikit-learn's UCI digits (8x8, 16 grey
levels), upsampled bilinearly to 20x20 and padded to 28x28 as MNIST centres its digits in a 20x20 box;
for each strength, the classifier's label of the output against the UCI label ("label kept") and FID
against the MNIST5k test digits (realism in the model's domain). Strength 0 is the sources themselves.

Writes ``<out>/<name>_image_to_image.json`` (every number, the sample counts and the settings),
``<out>/sdedit_curve.png`` and ``<out>/inpainting_grid.png`` (source | masked | replacement |
RePaint) and ``<out>/sdedit_grid.png`` (with ``--name`` other than ``pixel``, the PNGs get the name
as a prefix). Sample i draws from the generator ``seed + i``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from lit_genai import load, paradigm  # noqa: E402
from lit_genai.data import MNIST5k  # noqa: E402
from lit_genai.diffusion.editing import start_level  # noqa: E402
from lit_genai.media import to_uint8  # noqa: E402
from lit_genai.media.image import image_grid  # noqa: E402
from lit_genai.media.sources import named_mask  # noqa: E402
from lit_genai.metrics.features import get_extractor  # noqa: E402
from lit_genai.metrics.quality import QualityMetrics  # noqa: E402

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)


def mnist_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n MNIST5k test digits (n, 1, 28, 28) in [-1, 1] and their labels."""
    data = MNIST5k(batch_size=500)
    data.setup("test")
    images, labels = zip(*[(x, y) for x, y in data.test_dataloader()], strict=True)
    return torch.cat(images)[:n], torch.cat(labels)[:n]


def uci_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n UCI digits (random, seeded) as 28x28 MNIST-like images in [-1, 1]: (n, 1, 28, 28), labels."""
    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.from_numpy(digits.images).float()[order, None] / 16.0  # (n, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    x = F.pad(x, (4, 4, 4, 4))  # (n, 1, 28, 28): MNIST's 20x20 box, centred
    return x * 2 - 1, torch.from_numpy(digits.target).long()[order]


def draw(module, images: torch.Tensor, batch: int, seed: int, mask=None, **options) -> torch.Tensor:
    """module.sample over ``images`` (and ``mask``) in batches; sample i from the generator seed + i."""
    out = []
    for first in range(0, len(images), batch):
        rows = slice(first, min(first + batch, len(images)))
        cond = {"image": images[rows], **({"mask": mask[rows]} if mask is not None else {})}
        generators = paradigm.sample_generators(seed, range(rows.start, rows.stop))
        out.append(module.sample(len(generators), cond=cond, generator=generators, **options))
    return torch.cat(out)


def score(extractor, images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Classifier accuracy of ``images`` against ``labels`` and FID of their features against ``real``."""
    fake8, real8 = to_uint8(images), to_uint8(real)
    with torch.no_grad():
        predicted = torch.cat(
            [extractor.logits(fake8[i : i + 500]).argmax(1) for i in range(0, len(fake8), 500)]
        )
    metrics = QualityMetrics(extractor, metrics=("fid",))
    for i in range(0, len(real8), 500):
        metrics.update_real(real8[i : i + 500])
    for i in range(0, len(fake8), 500):
        metrics.update_fake(fake8[i : i + 500])
    fid = next(v for k, v in metrics.compute().items() if k.startswith("fid"))
    return {"accuracy": float((predicted.cpu() == labels).float().mean()), "fid": float(fid)}


def picture_grid(rows: list[torch.Tensor], names: list[str], path: Path, title: str) -> None:
    """Rows of (k, 1, H, W) images in [-1, 1] as one labelled picture (one row per name)."""
    grids = [image_grid(to_uint8(row), nrow=len(row)) for row in rows]  # (3, H', W') each
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.6 * len(rows[0]) + 1.2, 0.68 * len(rows) + 0.4))
    for ax, grid, name in zip(axes, grids, names, strict=True):
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="run folder or checkpoint of an MNIST diffusion / EDM / flow model")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--name", default="pixel", help="prefix of the pictures (none for 'pixel')")
    parser.add_argument("--n", type=int, default=500, help="MNIST5k test digits to inpaint (at most 500)")
    parser.add_argument("--n_uci", type=int, default=500, help="UCI digits to edit")
    parser.add_argument("--mask", default="left_half")
    parser.add_argument("--repaint_jump", type=int, default=5)
    parser.add_argument("--repaint_resample", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", default=None, help="exported classifier weights (default: shipped)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inpaint", "repaint", "sdedit"])
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out, prefix = Path(args.out), "" if args.name == "pixel" else f"{args.name}_"
    out.mkdir(parents=True, exist_ok=True)
    module = load(args.run)
    extractor = get_extractor("mnist", args.classifier)
    report: dict = {"run": args.run, "sampling": {k: str(v) for k, v in module.sampling_settings().items()}}
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("run",)}

    images, labels = mnist_test(args.n)
    mask = named_mask(args.mask, images.shape[-2:]).expand(len(images), 1, *images.shape[-2:])
    masked = torch.where(mask, torch.full_like(images, -1.0), images)  # the known half, the rest black
    report["inpainting"] = {
        "n": len(images),
        "mask": args.mask,
        "originals": score(extractor, images, labels, images),
        "known_half_only": score(extractor, masked, labels, images),
    }
    outputs = {}
    for method, options in (
        ("replacement", {"inpaint": "replacement"}),
        (
            "repaint",
            {
                "inpaint": "repaint",
                "repaint_jump": args.repaint_jump,
                "repaint_resample": args.repaint_resample,
            },
        ),
    ):
        if (method == "replacement" and "inpaint" in args.skip) or method in args.skip:
            continue
        start = time.time()
        filled = draw(module, images, args.batch, args.seed, mask=mask, **options)
        minutes = (time.time() - start) / 60
        kept = bool(torch.equal(filled[~mask.expand_as(filled)], images[~mask.expand_as(images)]))
        report["inpainting"][method] = {
            **score(extractor, filled, labels, images),
            "minutes": minutes,
            "known_pixels_exact": kept,
        }
        outputs[method] = filled
        print(method, report["inpainting"][method], flush=True)
    if outputs:
        k, names = 10, ["source", "masked", *outputs]
        picture_grid(
            [images[:k], masked[:k], *(outputs[m][:k] for m in outputs)],
            names,
            out / f"{prefix}inpainting_grid.png",
            f"{args.mask} filled, MNIST5k test digits 0-{k - 1} ({args.run.rstrip('/').split('/')[-1]})",
        )
        report["inpainting"]["grid_rows"] = names

    if "sdedit" not in args.skip:
        sources, uci_labels = uci_digits(args.n_uci, args.seed)
        real = mnist_test(500)[0]
        curve = [{"strength": 0.0, **score(extractor, sources, uci_labels, real), "minutes": 0.0}]
        edited = {}
        for strength in STRENGTHS:
            start = time.time()
            edited[strength] = draw(module, sources, args.batch, args.seed, strength=strength)
            row = {"strength": strength, **score(extractor, edited[strength], uci_labels, real)}
            settings = module.sampling
            if hasattr(module, "sigma_grid") and settings.sampler not in ("ddpm", "ddim"):
                grid = module.sigma_grid(settings.steps)  # where SDEdit starts on the solver's grid
                row["start_sigma"] = float(grid[start_level(settings.steps, strength)])
            curve.append({**row, "minutes": (time.time() - start) / 60})
            print(curve[-1], flush=True)
        report["sdedit"] = {
            "n": len(sources),
            "sources": "UCI digits 8x8 -> 20x20 bilinear, padded to 28x28",
            "curve": curve,
        }
        fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
        s = [c["strength"] for c in curve]
        ax[0].plot(s, [c["accuracy"] for c in curve], "o-")
        ax[0].set(xlabel="SDEdit strength", ylabel="label kept (classifier)", ylim=(0, 1.02))
        ax[1].plot(s, [c["fid"] for c in curve], "o-", color="C1")
        ax[1].set(xlabel="SDEdit strength", ylabel="FID vs MNIST test (classifier features)")
        fig.suptitle(f"SDEdit of {len(sources)} UCI digits with {args.run.rstrip('/').split('/')[-1]}")
        fig.tight_layout()
        fig.savefig(out / f"{prefix}sdedit_curve.png", dpi=120)
        k = 10
        picture_grid(
            [sources[:k], *(edited[st][:k] for st in STRENGTHS)],
            ["UCI source", *(f"strength {st}" for st in STRENGTHS)],
            out / f"{prefix}sdedit_grid.png",
            f"SDEdit of UCI digits, labels {uci_labels[:k].tolist()}",
        )
    (out / f"{args.name}_image_to_image.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
