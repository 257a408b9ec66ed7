"""``lit-genai augment``: does adding a model's generated digits to real ones help a classifier?

    lit-genai augment --ckpt runs/diffusion-mnist runs/gan-dcgan_mnist_cond --output runs/augment

For each checkpoint (``lit_genai.api.load``; a class-conditional image model of the data's K = 10
digits) it draws a synthetic pool once (``pool.py``: max r * max q images per class, labels i % K,
cached as ``<output>/<model>.pool.pt``), runs the sweep (``sweep.py``: r real images per class x
ratios q x seeds, each cell a ``DomainClassifier`` trained on the real images plus round(q * r)
generated ones per class) and writes the report (``report.py``: ``augment.md``, ``augment.json``,
``<model>.png``). Real images are MNIST5k's train and val splits (4,500 digits, at least 436 per
class); the 500 test digits are the held-out set and are never trained on.

Each trained cell is appended to ``<output>/cells.jsonl``: a rerun with the same settings skips it,
so an interrupted sweep goes on where it stopped, and checkpoints added later reuse the real-only
cells.

Shape legend: N images, K classes, C/H/W image.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
import yaml

from lit_genai.augment.pool import pool_identity, synthetic_pool
from lit_genai.augment.report import write_report
from lit_genai.augment.sweep import Images, Training, run_sweep
from lit_genai.errors import ConfigError

NUM_CLASSES = 10  # MNIST5k's digits
CELLS_FILE = "cells.jsonl"


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one ``ConfigError`` line (``lit-genai: error: ...``, exit 1)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"lit-genai augment: {message} (see lit-genai augment --help)")


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(
        prog="lit-genai augment",
        description="Train a digit classifier on real MNIST5k digits alone and plus a class-conditional "
        "model's generated ones; report held-out accuracy (docs: README, 'Generated data as augmentation').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ckpt", nargs="+", required=True, help="run folders or .ckpt files of class-conditional models"
    )
    p.add_argument(
        "--real_per_class", nargs="+", type=int, default=[10, 50, 400], help="real images per class, r"
    )
    p.add_argument(
        "--ratios", nargs="+", type=float, default=[0.0, 1.0, 3.0], help="synthetic : real ratios q"
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds: real draw, synthetic draw, init"
    )
    p.add_argument(
        "--epochs", type=int, default=Training.epochs, help="passes over a row's largest mix (sets its steps)"
    )
    p.add_argument("--min_steps", type=int, default=Training.min_steps, help="fewest Adam steps of a cell")
    p.add_argument("--batch_size", type=int, default=Training.batch_size, help="images per classifier step")
    p.add_argument("--width", type=int, default=Training.width, help="classifier width (DomainClassifier)")
    p.add_argument("--output", default="runs/augment", help="folder of the report, pools and cells.jsonl")
    p.add_argument(
        "--sampling",
        nargs="*",
        default=[],
        metavar="[RUN:]NAME=VALUE",
        help="sampling options of every model, or of run RUN only (steps=10, diffusion-mnist:steps=10)",
    )
    p.add_argument("--sample_seed", type=int, default=0, help="pool sample i draws from seed sample_seed + i")
    p.add_argument("--device", default="cpu", help="where the models sample and the classifiers train")
    return p


def main(args: Optional[Sequence[str]] = None) -> None:
    """Run ``lit-genai augment ARGS`` (module docstring); user mistakes are one ``ConfigError`` line."""
    opts = parser().parse_args(args)
    check(opts)
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    training = Training(opts.epochs, opts.min_steps, opts.batch_size, opts.width, opts.device)
    real, test = real_images()
    fewest = int(torch.bincount(real.labels, minlength=NUM_CLASSES).min())
    if max(opts.real_per_class) > fewest:
        raise ConfigError(
            f"lit-genai augment: --real_per_class {max(opts.real_per_class)} is more than the {fewest} real "
            "training images of MNIST5k's smallest class: lower it"
        )
    pools = {
        name: model_pool(ckpt, name, opts, out)
        for name, ckpt in zip(model_names(opts.ckpt), opts.ckpt, strict=True)
    }
    cells = out / CELLS_FILE
    done = read_cells(cells)
    with cells.open("a") as file:
        if file.tell() and not cells.read_bytes().endswith(b"\n"):
            file.write("\n")  # end the half-written line of a killed run

        def record(key: str, row: dict[str, Any]) -> None:
            file.write(json.dumps({"key": key, "row": row}) + "\n")
            file.flush()  # a killed sweep keeps every cell it trained

        rows = run_sweep(
            real,
            pools,
            test,
            real_per_class=opts.real_per_class,
            ratios=opts.ratios,
            seeds=opts.seeds,
            training=training,
            num_classes=NUM_CLASSES,
            done=done,
            on_cell=record,
        )
    settings = {**vars(opts), "training": training.__dict__, "real": real.identity, "test": test.identity}
    settings["pools"] = {name: json.loads(pool.identity) for name, pool in pools.items()}
    paths = write_report(rows, settings, out)
    print("wrote " + ", ".join(str(path) for path in paths.values()))


def check(opts: argparse.Namespace) -> None:
    """The option values that argparse's types let through but the sweep cannot use: one line each."""
    if min(opts.real_per_class) < 1 or min(opts.ratios) < 0 or opts.epochs < 1 or opts.min_steps < 1:
        raise ConfigError(
            f"lit-genai augment: --real_per_class {opts.real_per_class}, --ratios {opts.ratios}, --epochs "
            f"{opts.epochs}, --min_steps {opts.min_steps}: give r >= 1, q >= 0, epochs and steps >= 1"
        )
    if opts.batch_size < 1 or opts.width < 1:
        raise ConfigError(
            f"lit-genai augment: --batch_size {opts.batch_size}, --width {opts.width}: give >= 1"
        )


def real_images() -> tuple[Images, Images]:
    """MNIST5k's train and val splits (the real training pool) and its test split (held out)."""
    from lit_genai.data import MNIST5k

    data = MNIST5k()  # the split every lit-genai run of MNIST5k uses (seed 0)
    data.setup()
    train_x, train_y = (torch.cat(t) for t in zip(data.train_set.tensors, data.val_set.tensors, strict=True))
    identity = json.dumps(data.identity(), sort_keys=True)
    test_x, test_y = data.test_set.tensors
    return Images(train_x, train_y, f"{identity} train+val"), Images(test_x, test_y, f"{identity} test")


def model_names(ckpts: Sequence[str]) -> list[str]:
    """A name per checkpoint: its run folder's (``runs/<name>/checkpoints/last.ckpt`` -> name)."""
    names = []
    for ckpt in ckpts:
        path = Path(ckpt).expanduser().resolve()
        if path.name == "checkpoints" or (path.is_file() and path.parent.name == "checkpoints"):
            path = path.parent.parent if path.is_file() else path.parent
        names.append(path.name if path.is_dir() else path.stem)
    if len(set(names)) < len(names):
        raise ConfigError(f"lit-genai augment: --ckpt {' '.join(ckpts)} name the same run twice ({names})")
    return names


def model_pool(ckpt: str, name: str, opts: argparse.Namespace, out: Path) -> Images:
    """The checkpoint's synthetic pool as float images in [-1, 1], with its identity."""
    from lit_genai.api import generate, load  # the api imports every paradigm: only when it runs

    module = load(ckpt, device=opts.device)
    options = sampling_options(opts.sampling, name, model_names(opts.ckpt))
    if int(getattr(module, "num_classes", 0) or 0) != NUM_CLASSES or module.modality != "image":
        raise ConfigError(
            f"{ckpt}: augment needs a class-conditional image model of the {NUM_CLASSES} MNIST5k digits; "
            f"this one has modality {module.modality} and num_classes {module.num_classes}"
        )
    try:  # one sample, (1, C, H, W): wrong options fail here, not after a pool's worth of samples
        probe = generate(module, 1, seed=opts.sample_seed, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # a value of the wrong type reaches the sampler as it is
        raise ConfigError(f"{ckpt}: sampling with --sampling {options} fails: {error}") from None
    if tuple(probe.shape[1:]) != (1, 28, 28):
        raise ConfigError(f"{ckpt}: its images are {tuple(probe.shape[1:])}, MNIST5k's (1, 28, 28)")
    per_class = max(round(q * r) for q in opts.ratios for r in opts.real_per_class)
    if per_class == 0:
        return Images(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), name)
    print(f"{name}: synthetic pool of {per_class} images per class")
    path = out / f"{name}.pool.pt"
    images, labels = synthetic_pool(module, per_class, path, seed=opts.sample_seed, options=options)
    identity = pool_identity(module, opts.sample_seed, options)
    return Images(images.float() / 127.5 - 1, labels, identity)  # uint8 -> [-1, 1]


def sampling_options(items: Sequence[str], model: str, models: Sequence[str]) -> dict[str, Any]:
    """The ``--sampling`` options of ``model``: ``["steps=10", "gan-x:truncation=1"]`` -> {"steps": 10}
    for any other model (values read as YAML). A ``RUN:`` prefix is for that run only, since the
    paradigms' settings differ (a GAN has no steps, MaskGIT's steps are not a diffusion sampler's)."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        run, _, name = name.rpartition(":")
        if not sep or not name or (run and run not in models):
            raise ConfigError(
                f"lit-genai augment: --sampling {item!r}: give NAME=VALUE or RUN:NAME=VALUE with RUN one of "
                f"{', '.join(models)} (e.g. steps=10)"
            )
        if run in ("", model):
            options[name] = yaml.safe_load(value)
    return options


def read_cells(path: Path) -> dict[str, dict[str, Any]]:
    """The cells trained before, by key (a half-written last line of a killed run is skipped)."""
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[entry["key"]] = entry["row"]
    return done
