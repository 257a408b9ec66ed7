"""The GPU check (``benchmarks/gpu_check.sh`` + ``gpu_check.py``) parses and dry-runs on the CPU.

``--dry-run`` runs every part for 1-2 steps at tiny sizes on one CPU thread (the DDP part in its
subprocess, world size 1) and writes the JSON the GPU run writes: each part must be there with its
keys and finite numbers, so the one prepared script a lent GPU runs has been run before.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_check import (  # noqa: E402
    GPT_VARIANT_KEYS,
    GPT_VARIANTS,
    PART_KEYS,
    PARTS,
    RUN_KEYS,
    peak_bf16_flops,
)


def _numbers(value, where=""):
    """Every number in ``value`` (nested dicts and lists) with its path."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{where}[{i}]")


def test_the_wrapper_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env.pop("OUT", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # seconds on an idle core; a loaded machine takes longer
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_dry_run_writes_every_part_with_finite_numbers(dry_run):
    report, stdout = dry_run
    assert report["dry_run"] is True
    assert report["schema_problems"] == []
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["error"])
        assert set(PART_KEYS[name]) <= set(part), name
    for where, value in _numbers(report["parts"]):
        assert math.isfinite(value), where
    parts = report["parts"]
    assert parts["ddpm"]["plain_images_per_s"] > 0 and parts["ddpm"]["lightning_vs_plain"] > 0
    gpt = parts["gpt"]
    assert gpt["compile_error"] is None and gpt["peak_flops"] is None  # no peak for a CPU
    for variant in GPT_VARIANTS:
        assert set(GPT_VARIANT_KEYS) <= set(gpt["variants"][variant]), variant
        assert gpt["variants"][variant]["tokens_per_s"] > 0 and gpt["variants"][variant]["mfu"] is None
    runs = parts["precision"]["runs"]
    assert set(runs) == {f"{p} {m}" for p in ("gan", "diffusion") for m in ("16-mixed", "bf16-mixed")}
    for name, run in runs.items():
        assert set(RUN_KEYS) <= set(run) and run["losses_finite"] and run["n_losses"] >= 2, name
    assert parts["precision"]["all_finite"] is True
    ddp = parts["ddp"]
    assert ddp["world_size"] == 1 and ddp["strategy"] == "DDPStrategy" and ddp["losses_finite"]
    assert "results in" in stdout and "ddpm" in stdout  # the wrapper's line and the summary table


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", None),
    ],
)
def test_the_card_gives_its_peak_bf16_flops(name, peak):
    assert peak_bf16_flops(name) == peak
