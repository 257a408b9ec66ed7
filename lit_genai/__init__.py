"""lit_genai: generative models as PyTorch Lightning modules, configured by LightningCLI YAML.

``lit_genai.load``, ``lit_genai.generate``, ``lit_genai.save`` and ``lit_genai.decode`` (from
``lit_genai.api``) use a trained model from Python; they are imported on first use, so that
``import lit_genai.nn`` stays light.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("load", "generate", "save", "decode")


def __getattr__(name: str) -> Any:
    if name in _API:
        from lit_genai import api

        return getattr(api, name)
    raise AttributeError(f"module 'lit_genai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
