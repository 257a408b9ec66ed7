"""The augmentation sweep's report: a summary over seeds, a markdown table, a JSON and a plot per model.

Each cell (model, r real images per class, ratio q) is summarised over its seeds by the mean accuracy
and a 95% Student t interval, mean ± t(0.975, n - 1) * s / sqrt(n) with s the sample standard
deviation (ddof 1): the interval for few runs whose spread is estimated from themselves. The gain
over the real-only cell is the mean of the *paired* differences (same seed: same real images, same
initial weights; ``lit_genai.augment.sweep``) with its own t interval, tighter than the difference of
two independent means.

Files (``write_report``): ``augment.json`` (settings, every cell, the summary), ``augment.md`` (one
table per model) and ``<model>.png`` (accuracy against r, one line per ratio with the intervals as
error bars; per-class accuracy as a heat map).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

INTERVAL = "95% Student t interval over seeds: mean ± t(0.975, n-1) * s / sqrt(n), s with ddof 1"


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, Optional[float]]:
    """(mean, half-width of the two-sided Student t interval); the half-width is None for one value."""
    from scipy import stats  # only when a report is written

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, r, q), in the rows' order: seeds, counts, steps, mean accuracy and its
    interval, the paired gain over q = 0 (None where there is no q = 0 cell), per-class means."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["real_per_class"], row["ratio"]), []).append(row)
    baseline = {
        key[:2]: {row["seed"]: row["accuracy"] for row in cells}
        for key, cells in groups.items()
        if key[2] == 0
    }
    summary = []
    for (model, r, q), cells in groups.items():
        mean, ci = t_interval([cell["accuracy"] for cell in cells])
        paired = [
            cell["accuracy"] - baseline[model, r][cell["seed"]]
            for cell in cells
            if cell["seed"] in baseline.get((model, r), {})
        ]
        gain, gain_ci = t_interval(paired) if paired and q != 0 else (None, None)
        per_class = [
            _mean([cell["per_class_accuracy"][k] for cell in cells])
            for k in range(len(cells[0]["per_class_accuracy"]))
        ]
        summary.append(
            {
                "model": model,
                "real_per_class": r,
                "ratio": q,
                "seeds": [cell["seed"] for cell in cells],
                "real_counts": cells[0]["real_counts"],
                "synthetic_counts": cells[0]["synthetic_counts"],
                "steps": cells[0]["steps"],
                "accuracy": mean,
                "accuracy_ci": ci,
                "gain": gain,
                "gain_ci": gain_ci,
                "per_class_accuracy": per_class,
            }
        )
    return summary


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary of one model as a markdown table: one row per (r, q); accuracies in %."""
    if not summary:
        return ""
    num_classes = len(summary[0]["per_class_accuracy"])
    n = len(summary[0]["seeds"])
    header = [
        "real / class",
        "synthetic : real",
        "synthetic / class",
        "steps",
        f"accuracy % (95% t, n={n})",
        "gain vs real only (paired)",
        *[f"class {k}" for k in range(num_classes)],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for entry in summary:
        cells = [
            str(entry["real_per_class"]),
            f"{entry['ratio']:g}",
            str(entry["synthetic_counts"][0]),
            str(entry["steps"]),
            _pm(entry["accuracy"], entry["accuracy_ci"]),
            "-" if entry["gain"] is None else _pm(entry["gain"], entry["gain_ci"], sign=True),
            *["-" if a is None else f"{100 * a:.0f}" for a in entry["per_class_accuracy"]],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], out_dir: Path
) -> dict[str, Path]:
    """Write ``augment.json``, ``augment.md`` and ``<model>.png`` per model into ``out_dir``; returns
    {"json": path, "markdown": path, <model>: png path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    models = list(dict.fromkeys(entry["model"] for entry in summary))
    paths = {"json": out_dir / "augment.json", "markdown": out_dir / "augment.md"}
    paths["json"].write_text(
        json.dumps(
            {"settings": dict(settings), "interval": INTERVAL, "summary": summary, "cells": list(rows)},
            indent=1,
        )
        + "\n"
    )
    sections = [f"Held-out accuracy on the real test images; {INTERVAL}.\n"]
    for model in models:
        own = [entry for entry in summary if entry["model"] == model]
        sections.append(f"## {model}\n\n{markdown_table(own)}")
        paths[model] = plot(own, out_dir / f"{model}.png", title=model)
    paths["markdown"].write_text("\n".join(sections))
    return paths


def plot(summary: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy against real images per class (log axis), one line per ratio with t-interval error
    bars; beside it, per-class accuracy of every (r, q) as a heat map. Returns ``path``."""
    # matplotlib only when a plot is drawn: importing it would slow every ``lit-genai`` start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=90)
    FigureCanvasAgg(figure)
    lines, heat = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    ratios = list(dict.fromkeys(entry["ratio"] for entry in summary))
    for i, q in enumerate(ratios):
        own = [entry for entry in summary if entry["ratio"] == q]
        nudge = 1 + 0.04 * (i - (len(ratios) - 1) / 2)  # side by side on the log axis: bars apart
        lines.errorbar(
            [entry["real_per_class"] * nudge for entry in own],
            [100 * entry["accuracy"] for entry in own],
            yerr=[100 * (entry["accuracy_ci"] or 0.0) for entry in own],
            marker="o",
            capsize=3,
            label="real only" if q == 0 else f"+ {q:g} x synthetic",
        )
    ticks = sorted({entry["real_per_class"] for entry in summary})
    lines.set_xscale("log")
    lines.set_xticks(ticks, [str(t) for t in ticks])
    lines.set_xlabel("real training images per class")
    lines.set_ylabel("test accuracy % (95% t interval)")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)

    values = [[math.nan if a is None else 100 * a for a in entry["per_class_accuracy"]] for entry in summary]
    lowest = min((v for row in values for v in row if not math.isnan(v)), default=0.0)
    image = heat.imshow(values, aspect="auto", cmap="viridis", vmin=lowest, vmax=100)
    for i, row in enumerate(values):
        for k, value in enumerate(row):
            heat.text(
                k,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value < 90 else "black",
            )
    heat.set_yticks(
        range(len(summary)), [f"r={e['real_per_class']} q={e['ratio']:g}" for e in summary], fontsize=7
    )
    heat.set_xticks(range(len(values[0])))
    heat.set_xlabel("class")
    heat.set_title("per-class test accuracy % (mean over seeds)", fontsize=9)
    figure.colorbar(image, ax=heat)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _pm(mean: float, half: Optional[float], sign: bool = False) -> str:
    """A fraction as "97.1 ± 0.4" (percent); "+" in front of a gain."""
    value = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return value if half is None else f"{value} ± {100 * half:.1f}"
