"""Every notebook under notebooks/ runs top to bottom (no Jupyter needed) and keeps no outputs.

A notebook is run by exec-ing its code cells in order in one namespace, in a temporary working
directory (nothing is written into the repository), with ``QUICKSTART_STEPS=2`` so that training is
a smoke test. Notebook-specific checks of the final namespace live in ``CHECKS``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_notebook(path: Path) -> dict:
    """Exec the code cells of ``path`` in order in one namespace; returns the namespace."""
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name}, cell {i}", "exec"), namespace)
    return namespace


def check_quickstart(namespace: dict) -> None:
    samples = namespace["samples"]
    assert isinstance(samples, torch.Tensor)
    assert samples.shape == (16, 1, 28, 28) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all()
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert namespace["trainer"].global_step == 2  # QUICKSTART_STEPS was read


CHECKS = {"quickstart.ipynb": check_quickstart}


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """Tiny training runs, a non-interactive matplotlib, and a throwaway working directory."""
    monkeypatch.setenv("QUICKSTART_STEPS", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    plt = sys.modules.get("matplotlib.pyplot")  # None while hidden by test_quickstart_without_matplotlib
    if plt is not None:
        plt.close("all")


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    """nbformat 4, and no stored outputs or execution counts (they bloat diffs and go stale)."""
    nb = load(path)
    assert nb["nbformat"] == 4
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code", "raw")
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, notebook_env):
    namespace = run_notebook(path)  # raises if a cell fails
    assert path.name in CHECKS, f"add the checks of {path.name}'s results to CHECKS"
    CHECKS[path.name](namespace)
    assert not list(notebook_env.iterdir()), "the notebook wrote files into the working directory"


def test_quickstart_without_matplotlib(notebook_env, monkeypatch):
    """matplotlib is optional: without it the grid goes to a PNG in the working directory."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    namespace = run_notebook(NOTEBOOK_DIR / "quickstart.ipynb")
    check_quickstart(namespace)
    assert namespace["plt"] is None
    assert [p.name for p in notebook_env.iterdir()] == ["quickstart_samples.png"]
