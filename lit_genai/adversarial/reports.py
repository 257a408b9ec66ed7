"""A robustness curve's files and logs: ``robustness.json``, ``robustness.png``, ``examples.png``, loggers.

``write_curve`` plots the rows of ``curves.robustness_curve`` (one panel per metric against eps: PGD
(Madry et al. 2018) and random-noise lines, the clean value dotted), ``write_comparison`` puts several
curves in one picture (e.g. a normally and an adversarially trained model), ``write_examples`` draws
``curves.example_rows`` as a grid, and ``log_curve`` sends scalars, the plot and a W&B table to the
trainer's loggers.

Shape legend: N images in a row, C/H/W image; a row of a curve is a dict (see ``robustness_curve``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.media import log_images, to_uint8, write_image_grid


def write_examples(rows: dict[str, Tensor], path: Union[str, Path]) -> Path:
    """``example_rows`` as one PNG grid, a row per entry (top to bottom in the dict's order)."""
    images = torch.cat([to_uint8(v.detach().cpu()) for v in rows.values()])  # (rows * N, C, H, W)
    return write_image_grid(Path(path), images, nrow=next(iter(rows.values())).shape[0])


METRICS = {  # row key prefix -> axis label
    "objective": "objective",
    "accuracy": "accuracy",
    "distance": "L2 distance to target",
}


def curve_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics (``objective``, ``accuracy``, ``distance``) the rows hold."""
    return [m for m in METRICS if rows and f"{m}_clean" in rows[0]]


def write_curve(rows: Sequence[dict[str, Any]], out_dir: Union[str, Path], title: str) -> tuple[Path, Path]:
    """Write ``robustness.json`` (``{"title", "rows"}``) and ``robustness.png`` (one panel per metric
    against eps: PGD and noise lines, the clean value dotted) into ``out_dir``; returns both paths."""
    # matplotlib only when a curve is drawn: importing it would slow every ``lit-genai`` start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "robustness.json", out / "robustness.png"
    json_path.write_text(json.dumps({"title": title, "rows": list(rows)}, indent=2) + "\n")

    metrics = curve_metrics(rows)
    figure = Figure(figsize=(4.2 * max(len(metrics), 1), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    eps = [row["eps"] for row in rows]
    objective = rows[0]["objective"] if rows else ""
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        axes.plot(eps, [r[f"{metric}_pgd"] for r in rows], "o-", color="tab:red", label="PGD")
        axes.plot(eps, [r[f"{metric}_noise"] for r in rows], "s--", color="tab:blue", label="random noise")
        axes.plot(eps, [r[f"{metric}_clean"] for r in rows], ":", color="grey", label="clean")
        label = f"objective ({objective})" if metric == "objective" else METRICS[metric]
        axes.set_xlabel(f"eps ({rows[0]['norm']})")
        axes.set_ylabel(label)
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(png_path)
    return json_path, png_path


def write_comparison(
    curves: dict[str, Sequence[dict[str, Any]]], png_path: Union[str, Path], title: str = ""
) -> Path:
    """One panel per metric with the PGD line of each curve (``{label: rows}``, e.g. a normally and
    an adversarially trained model) and its noise line dashed: the effect of adversarial training
    in one picture. Returns ``png_path``."""
    # matplotlib only when a curve is drawn: importing it would slow every ``lit-genai`` start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if all(rows and f"{m}_clean" in rows[0] for rows in curves.values())]
    if not curves or not metrics:
        raise ConfigError("write_comparison: give curves that share a metric (objective, accuracy, distance)")
    figure = Figure(figsize=(4.2 * len(metrics), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), i + 1)
        for (label, rows), colour in zip(curves.items(), colours * len(curves), strict=False):
            eps = [r["eps"] for r in rows]
            axes.plot(eps, [r[f"{metric}_pgd"] for r in rows], "o-", color=colour, label=f"{label}: PGD")
            axes.plot(
                eps,
                [r[f"{metric}_noise"] for r in rows],
                "s--",
                color=colour,
                alpha=0.5,
                label=f"{label}: noise",
            )
        first = next(iter(curves.values()))
        axes.set_xlabel(f"eps ({first[0]['norm']})")
        axes.set_ylabel(f"objective ({first[0]['objective']})" if metric == "objective" else METRICS[metric])
        if metric == "accuracy":
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path)
    return png_path


def curve_scalars(rows: Sequence[dict[str, Any]], prefix: str = "robustness") -> dict[str, float]:
    """The rows as flat scalars ``<prefix>/<metric>_<kind>@eps=<eps>`` (any logger can take them)."""
    return {
        f"{prefix}/{key}@eps={row['eps']:g}": float(value)
        for row in rows
        for key, value in row.items()
        if key.split("_")[0] in METRICS and isinstance(value, (int, float))
    }


def log_curve(
    trainer: Any, rows: Sequence[dict[str, Any]], png_path: Union[str, Path], key: str = "robustness"
) -> None:
    """Send the curve to the trainer's loggers: scalars ``<key>/<metric>_<kind>@eps=<eps>`` to all of
    them, the PNG as an image (W&B, TensorBoard: ``log_png``) and the rows as a
    W&B table ``<key>/table``."""
    if not trainer.loggers:
        return
    step = trainer.global_step
    scalars = curve_scalars(rows, key)
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)
        if isinstance(logger, WandbLogger) and rows:
            columns = list(rows[0])
            logger.log_table(
                key=f"{key}/table",
                columns=columns,
                data=[[r.get(c) for c in columns] for r in rows],
                step=step,
            )
    log_png(trainer, f"{key}/curve", png_path, caption=Path(png_path).parent.name)
    for logger in trainer.loggers:
        logger.save()


def log_png(trainer: Any, key: str, png_path: Union[str, Path], caption: Optional[str] = None) -> None:
    """Send a PNG written here (a curve, an examples grid) to the trainer's image loggers as ``key``."""
    with Image.open(png_path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    log_images(trainer, key, pixels[None], caption=caption)
