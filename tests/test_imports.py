"""Modules import on their own, first, in a fresh interpreter (no circular imports).

Spawned processes (DDP workers, DataLoader workers) import modules in whatever order their entry
point does, so an import cycle that the test session's import order hides breaks them.
"""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_genai"
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)


def _import_alone(module: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300
    )


def test_metrics_import_first():
    # metrics -> data / callbacks -> metrics was a cycle once; DDP workers import metrics first.
    done = _import_alone("lit_genai.metrics.fid")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_first(module):
    done = _import_alone(module)
    assert done.returncode == 0, done.stderr[-2000:]
