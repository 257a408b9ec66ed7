"""The files of ``lit-genai export``: torch.export programs (.pt2), ONNX models, safetensors weights.

- ``torch_export``: each program (``programs.py``) traced by ``torch.export.export`` with a dynamic
  batch (``torch.export.Dim``; every input's first dimension is the same ``batch``) and written by
  ``torch.export.save`` as ``<program>.pt2``; ``torch.export.load(path).module()`` runs it in any
  Python with torch, without lit_genai.
  A next-token model's program is the one-token decode step of its GPT or WaveNet (``decoding.py``:
  a static key/value cache or ring buffers, ``batch_size`` rows), written as ``decode_step.pt2``.
- ``onnx``: the same exported program translated by ``torch.onnx.export(..., dynamo=True)`` into
  ``<program>.onnx`` (opset of the installed torch), its batch axis named ``batch``. An operator ONNX
  cannot express is one ``ConfigError`` line naming it.
- ``safetensors``: the weights of ``programs.networks`` (EMA in, as loaded), ``<network>.safetensors``
  each, written by ``safetensors.torch.save_model`` (which drops tied duplicates; read back with
  ``safetensors.torch.load_model(net, path)``), with their ``class_path`` + ``init_args`` in
  ``export.json``.

Every format also writes ``export.json`` (``manifest.py``). Files are written into a hidden staging
folder inside the output folder and renamed into place at the end (``os.replace``, atomic within one
file system), so an interrupted or refused export leaves no half-written file and earlier exports
whole.

Shape legend: B batch (dynamic).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule

from lit_genai.ar import NextToken
from lit_genai.errors import ConfigError
from lit_genai.export import manifest
from lit_genai.export.programs import BATCH, Program, network_configs, networks, programs

Format = Literal["torch_export", "onnx", "safetensors"]
FORMATS: tuple[str, ...] = ("torch_export", "onnx", "safetensors")
MANIFEST = "export.json"
FILE_MODE = 0o644  # what open() makes under the usual umask: others may read the exported files
EXTRA = "pip install 'lit_genai[export]'"


def export(
    module: LightningModule,
    format: Format,
    output_dir: os.PathLike | str,
    *,
    config: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
    batch_size: int = 1,
) -> list[Path]:
    """Write ``module`` in ``format`` into ``output_dir`` (created) with its ``export.json``; the
    paths written.

    Args:
        module: A loaded module (``lit_genai.load``): eval mode, the weights to export in.
        format: ``torch_export``, ``onnx`` or ``safetensors``.
        output_dir: The folder of the files; files of the same names there are replaced.
        config: The run's ``model.init_args`` (networks' ``class_path`` + ``init_args``), when known.
        source: What was exported (the checkpoint), recorded in ``export.json``.
        batch_size: The static batch of a token model's decode step (its cache's rows).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    output_dir = Path(output_dir)
    with _staging(output_dir) as stage:
        if format == "safetensors":
            files = save_safetensors(networks(module), stage)
            described = {"networks": _networks_json(module, files, config)}
        elif isinstance(module, NextToken):
            files, described = save_decode_step(module, format, stage, batch_size)
        else:
            found = programs(module)
            files = {}
            for program in found:
                exported = export_program(program)
                if format == "torch_export":
                    files[program.name] = save_torch_export(exported, stage / f"{program.name}.pt2")
                else:
                    files[program.name] = save_onnx(program, exported, stage / f"{program.name}.onnx")
            described = {"programs": {p.name: {"file": files[p.name].name, **p.as_json()} for p in found}}
        document = manifest.describe(module, format, described, source=source)
        (stage / MANIFEST).write_text(dumps(document) + "\n")
    return [output_dir / path.name for path in (*files.values(), stage / MANIFEST)]


# ---------------------------------------------------------------------- torch.export


def export_program(program: Program) -> torch.export.ExportedProgram:
    """``program`` traced by ``torch.export.export`` with every input's first dimension the dynamic
    ``batch`` (a batch of 2 is the example, so the batch is not specialised to 1)."""
    batch = torch.export.Dim(BATCH, min=1)
    dynamic = tuple({0: batch} for _ in program.inputs)
    try:
        return torch.export.export(program.network, program.example_inputs(2), dynamic_shapes=dynamic)
    except Exception as error:  # torch.export's errors are long: the first line says what failed
        raise ConfigError(
            f"torch.export cannot trace the {program.name} ({type(program.network).__name__}) with a "
            f"dynamic batch: {_first_line(error)}"
        ) from None


def save_torch_export(exported: torch.export.ExportedProgram, path: Path) -> Path:
    """``torch.export.save`` of ``exported`` to ``path``."""
    torch.export.save(exported, path)
    return path


def save_decode_step(
    module: NextToken, format: str, folder: Path, batch_size: int
) -> tuple[dict[str, Path], dict[str, Any]]:
    """A next-token model's program: the one-token decode step of its GPT or WaveNet with its static
    cache (``decoding.py``), as ``decode_step.pt2``; its files and ``programs`` section."""
    if format != "torch_export":  # ONNX graphs are functions: they keep no buffers between runs
        raise ConfigError(
            f"a {type(module).__name__}'s program is its one-token decode step, whose cache is written in "
            "place from call to call, which an ONNX model cannot keep: use --format torch_export"
        )
    from lit_genai.export.decoding import decode_step_signature, export_decode_step

    path = save_torch_export(export_decode_step(module.net, batch_size), folder / "decode_step.pt2")
    signature = decode_step_signature(module.net, batch_size)
    return {"decode_step": path}, {"programs": {"decode_step": {"file": path.name, **signature}}}


# ---------------------------------------------------------------------- ONNX


def save_onnx(program: Program, exported: torch.export.ExportedProgram, path: Path) -> Path:
    """The ONNX model of ``exported`` (``torch.onnx.export``, dynamo) at ``path``: inputs named as the
    program's, its output ``program.output.name``, the batch axis ``batch``."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs both; say which extra installs them)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--format onnx needs the package {error.name}: {EXTRA}") from None
    try:
        onnx_program = torch.onnx.export(
            exported, (), dynamo=True, verbose=False, output_names=[program.output.name]
        )
    except torch.onnx.errors.OnnxExporterError as error:
        raise ConfigError(onnx_refusal(program, error)) from None
    onnx_program.rename_axes({onnx_program.model.graph.inputs[0].shape[0]: BATCH})
    onnx_program.save(path)  # weights in the file below 2 GB, beside it (path.data) above
    return path


def onnx_refusal(program: Program, error: BaseException) -> str:
    """One line for an ONNX export that failed: the operator that has no ONNX translation, and what to
    do instead."""
    text = "\n".join(str(e) for e in _chain(error))
    operator = re.search(r"target=torch\.ops\.([\w.]+)", text) or re.search(r"op='([\w.]+)'", text)
    what = f"the operator {operator[1]}" if operator else _first_line(error)
    return (
        f"ONNX cannot express the {program.name} ({type(program.network).__name__}): no ONNX translation "
        f"of {what} in torch {torch.__version__.split('+')[0]}; export it with --format torch_export instead"
    )


# ---------------------------------------------------------------------- safetensors


def save_safetensors(nets: Mapping[str, torch.nn.Module], folder: Path) -> dict[str, Path]:
    """``<name>.safetensors`` of each network's state dict in ``folder``; {name: path}."""
    try:
        from safetensors.torch import save_model
    except ImportError:
        raise ConfigError(f"--format safetensors needs the package safetensors: {EXTRA}") from None
    files = {}
    for name, net in nets.items():
        files[name] = folder / f"{name}.safetensors"
        save_model(net, str(files[name]), metadata={"format": "pt", "class": type(net).__qualname__})
    return files


def _networks_json(
    module: LightningModule, files: Mapping[str, Path], config: Optional[Mapping[str, Any]]
) -> dict[str, Any]:
    configs = network_configs(module, config)
    return {
        name: {"file": path.name, **(configs[name] or {"class_path": None})} for name, path in files.items()
    }


# ---------------------------------------------------------------------- helpers


def dumps(value: Any, indent: str = "") -> str:
    """JSON with one key per line, but each list of plain values (a shape, a schedule) on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value)


@contextmanager
def _staging(output_dir: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``output_dir``; on a clean exit each file in it replaces the
    file of its name in ``output_dir`` (module docstring). Always removed."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir))
    except OSError as error:  # a file of that name, no permission, a full disk
        raise ConfigError(
            f"cannot write into {output_dir} ({error.strerror}): give another --output"
        ) from None
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.chmod(path, FILE_MODE)  # some writers (safetensors) make owner-only files
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
