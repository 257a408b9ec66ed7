"""Weights files of the domain classifier: reading them, and the export command.

``load_classifier_state`` reads a ``DomainClassifier`` state dict from a plain weights file or a
``lit-genai fit`` checkpoint of ``Classifier`` (its EMA weights when the EMA callback was on);
``python -m lit_genai.metrics.classifier export CKPT OUT`` (``main``, ``export_weights``) writes the
float32 state dict shipped in ``lit_genai/metrics/weights/``. No paper: file plumbing.

Shape legend: C channels, H/W spatial (the ``sample_shape`` a checkpoint records).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lit_genai.atomic import atomic_file
from lit_genai.errors import ConfigError, DataNotFoundError, LitGenAIError
from lit_genai.metrics.classifier.network import DomainClassifier


def load_classifier_state(path: Union[str, Path]) -> tuple[dict[str, Tensor], Optional[tuple[int, ...]]]:
    """Read a ``DomainClassifier`` state dict from ``path``: a plain state dict, or a ``lit-genai fit``
    checkpoint of ``Classifier`` (its EMA weights when the EMA callback was on).

    Returns the float32 state dict and the (C, H, W) the network was trained on (None when the file
    does not say). Loads with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"classifier weights {str(path)!r} not found")
    try:
        data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, unsafe pickle
        raise ConfigError(f"cannot read classifier weights {str(path)!r}: {err}".splitlines()[0]) from err
    sample_shape = None
    if "state_dict" in data:  # a Lightning checkpoint of Classifier
        sample_shape = data.get("hyper_parameters", {}).get("sample_shape")
        shadow = data.get("callbacks", {}).get("EMA", {}).get("shadow")
        if shadow:
            state = {k.removeprefix("net."): v for k, v in shadow.items()}
        else:
            state = {k.removeprefix("net."): v for k, v in data["state_dict"].items() if k.startswith("net.")}
    else:
        state = data
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, tuple(int(s) for s in sample_shape) if sample_shape is not None else None


def export_weights(checkpoint: Union[str, Path], out: Union[str, Path]) -> Path:
    """Write the network of a ``Classifier`` checkpoint as a float32 state dict (what ships in
    ``lit_genai/metrics/weights/``); returns ``out``. The network must load into ``DomainClassifier``.

    Args:
        checkpoint: A ``Classifier`` checkpoint (or a state dict, rewritten as float32).
        out: The weights file to write; its folder is created.
    """
    state, _ = load_classifier_state(checkpoint)
    DomainClassifier.from_state_dict(state)  # refuse to write something the extractor cannot load
    buffer = io.BytesIO()
    torch.save(state, buffer)  # via a buffer: the archive's inner folder name, hence the bytes, do not
    out = Path(out)  # depend on the output path, so a re-export reproduces the shipped file exactly
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as file:  # never leave a half-written weights file behind
        file.write(buffer.getvalue())
    return out


def main(args: Optional[list[str]] = None) -> None:
    """``python -m lit_genai.metrics.classifier export CKPT OUT``; ``args`` default to ``sys.argv``."""
    parser = argparse.ArgumentParser(prog="python -m lit_genai.metrics.classifier")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="checkpoint of Classifier -> float32 state dict of its net")
    export.add_argument("checkpoint")
    export.add_argument("out")
    parsed = parser.parse_args(args)
    try:
        out = export_weights(parsed.checkpoint, parsed.out)
    except LitGenAIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
