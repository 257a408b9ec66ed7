"""``lit_genai.drop_nvml_cuda_check``: Lightning's NVML-based CUDA check is dropped only where NVML
cannot load, and ``torch.cuda.is_available()`` gives the same answer without it."""

import ctypes
import os
import subprocess
import sys

import lightning.fabric  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK=1 at import)
import pytest
import torch

import lit_genai

VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_dropped_only_without_nvml(monkeypatch):
    monkeypatch.setenv(VAR, "1")
    with_check = torch.cuda.is_available()
    lit_genai.drop_nvml_cuda_check()
    if _nvml_loads() or not torch.backends.cuda.is_built():
        assert os.environ.get(VAR) == "1"  # a GPU machine (or a CPU build) keeps Lightning's setting
    else:
        assert VAR not in os.environ
    assert torch.cuda.is_available() == with_check


def test_kept_where_nvml_loads(monkeypatch):
    monkeypatch.setenv(VAR, "1")
    monkeypatch.setattr(lit_genai, "_nvml_loads", True)  # as on a machine with an NVIDIA driver
    lit_genai.drop_nvml_cuda_check()
    assert os.environ.get(VAR) == "1"


def test_a_user_value_other_than_1_is_left_alone(monkeypatch):
    monkeypatch.setenv(VAR, "0")
    monkeypatch.setattr(lit_genai, "_nvml_loads", False)
    lit_genai.drop_nvml_cuda_check()
    assert os.environ.get(VAR) == "0"


@pytest.mark.parametrize(
    "imports", ["import lightning.pytorch, lit_genai", "import lit_genai.cli"], ids=["package", "cli"]
)
def test_holds_after_import(imports):
    # In a fresh interpreter: after Lightning then lit_genai (a script), and after the CLI's imports.
    code = f"import os, torch; {imports}; print(os.environ.get({VAR!r}), torch.cuda.is_available())"
    env = {k: v for k, v in os.environ.items() if k != VAR}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    value, available = done.stdout.split()[-2:]
    drop = torch.backends.cuda.is_built() and not _nvml_loads()
    assert value == ("None" if drop else "1")
    assert available == str(torch.cuda.is_available())
