"""lit_genai: generative models as PyTorch Lightning modules, configured by LightningCLI YAML.

``lit_genai.load``, ``lit_genai.generate``, ``lit_genai.save`` and ``lit_genai.decode`` (from
``lit_genai.api``) use a trained model from Python; they are imported on first use, so that
``import lit_genai.nn`` stays light.
"""

import os
import sys
from typing import Any

__version__ = "0.1.0"

_API = ("load", "generate", "save", "decode")

_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
_nvml_loads: "bool | None" = None  # whether libnvidia-ml loads here: decided once per process


def drop_nvml_cuda_check() -> None:
    """Undo ``lightning.fabric``'s ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` where NVML cannot load.

    Lightning sets the variable at import so that ``torch.cuda.is_available()`` asks NVML rather
    than the CUDA runtime, which would make a forked child unable to use CUDA. Where
    ``libnvidia-ml.so.1`` cannot be loaded (no NVIDIA driver), torch's NVML path fails its
    ``dlopen`` and falls back to the very same runtime call (``torch._C._cuda_getDeviceCount``),
    so the variable changes no answer and nothing about forking; it only adds the failed load to
    every call. A CUDA build of torch calls ``torch.cuda.is_available()`` in every Adam/AdamW
    ``step`` (``Optimizer._accelerator_graph_capture_health_check``). Measured on a machine without a
    driver (torch 2.14, one thread): 45 us per call with the variable against 1 us without in a tight
    loop, and 0.3-0.6 ms more per training step between real steps, about 5% of the 9-10 ms VAE
    step of ``benchmarks/vae_step.py --nvml-check both``, in plain PyTorch and Lightning alike.
    A no-op where NVML loads (a GPU machine keeps Lightning's setting), on builds of torch without
    CUDA (which never read the variable), and before ``lightning.fabric`` is imported.
    """
    global _nvml_loads
    if os.environ.get(_NVML_CHECK) != "1" or "lightning.fabric" not in sys.modules:
        return
    import torch  # imported already, by Lightning

    if not torch.backends.cuda.is_built():
        return
    if _nvml_loads is None:
        import ctypes

        try:
            ctypes.CDLL("libnvidia-ml.so.1")  # the library torch's NVML check loads
            _nvml_loads = True
        except OSError:
            _nvml_loads = False
    if not _nvml_loads:
        del os.environ[_NVML_CHECK]


def __getattr__(name: str) -> Any:
    if name in _API:
        from lit_genai import api

        drop_nvml_cuda_check()  # api imports Lightning
        return getattr(api, name)
    raise AttributeError(f"module 'lit_genai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


drop_nvml_cuda_check()  # when Lightning was imported first (the CLI calls it again after its imports)
