"""``lit-genai export``: a trained model as files other programs run, in one command.

    lit-genai export --ckpt runs/diffusion-mnist --format torch_export    # denoiser.pt2 + export.json
    lit-genai export --ckpt runs/diffusion-mnist --format onnx --output exported/
    lit-genai export --ckpt runs/gan-dcgan_mnist/checkpoints/last.ckpt --format safetensors --ema false

``--ckpt`` is a run folder or a checkpoint, loaded by ``lit_genai.load`` (EMA weights in unless
``--ema false``). ``torch_export``, ``onnx`` and ``safetensors`` are written by ``formats.export``
with their ``export.json`` (a next-token GPT or WaveNet exports its one-token decode step, for
``--batch_size`` rows); ``diffusers`` and ``transformers`` by
``lit_genai.export.diffusers.export_diffusers`` and ``lit_genai.export.huggingface.export_transformers``
(folders those libraries load). The default output folder is ``<run>/export/<format>``, the run
being the folder above ``checkpoints/`` (or the checkpoint's own folder). Mistakes (no checkpoint, a
checkpoint of another kind, a format the model does not have) are one ``ConfigError`` line, printed
by ``lit_genai.cli.main``.

Shape legend: none (files only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from lit_genai.errors import ConfigError


def main(args: list[str]) -> None:
    """``lit-genai export ARGS`` (``lit_genai.cli.USE_COMMANDS``): parse, load, write, list the files."""
    from jsonargparse import ArgumentParser  # the command line's parser library

    parser = ArgumentParser(
        prog="lit-genai export", description="Export a trained model to files that run without lit_genai."
    )
    parser.add_argument(
        "--ckpt", type=str, required=True, help="A run folder (runs/<name>) or a checkpoint file."
    )
    parser.add_argument(
        "--format",
        type=Literal["torch_export", "onnx", "safetensors", "diffusers", "transformers"],
        required=True,
        help="torch_export (.pt2 programs, dynamic batch), onnx, safetensors (weights + configs), "
        "diffusers or transformers (folders those libraries load).",
    )
    parser.add_argument(
        "--output", type=Optional[str], default=None, help="Output folder (default: <run>/export/<format>)."
    )
    parser.add_argument(
        "--ema", type=bool, default=True, help="Export the EMA weights when the run kept them."
    )
    parser.add_argument(
        "--batch_size", type=int, default=1, help="Rows of a GPT / WaveNet decode step (its cache is static)."
    )
    parsed = parser.parse_args(args)

    from lit_genai.api import load
    from lit_genai.api.load import checkpoint_file

    checkpoint = checkpoint_file(Path(parsed.ckpt).expanduser())
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    output = Path(parsed.output) if parsed.output else run / "export" / parsed.format
    module = load(checkpoint, ema=parsed.ema)
    try:
        written = export_module(
            module, parsed.format, output, _model_config(run), str(checkpoint), parsed.batch_size
        )
    except ConfigError as error:  # say which format refused, once (the interop modules say it already)
        text = str(error)
        raise ConfigError(
            text if text.startswith("--format") else f"--format {parsed.format}: {text}"
        ) from None
    for path in written:
        print(f"wrote {path}")


def export_module(
    module: Any, format: str, output: Path, config: Optional[dict[str, Any]], source: str, batch_size: int = 1
) -> list[Path]:
    """Write ``module`` in ``format`` into ``output``; the paths written (the folder, for interop)."""
    if format == "diffusers":
        from lit_genai.export.diffusers import export_diffusers  # the interop extra's libraries

        export_diffusers(module, output)
        return [output]
    if format == "transformers":
        from lit_genai.export.huggingface import export_transformers

        export_transformers(module, output)
        return [output]
    from lit_genai.export.formats import export

    return export(module, format, output, config=config, source=source, batch_size=batch_size)


def _model_config(run: Path) -> Optional[dict[str, Any]]:
    """The run's ``model.init_args`` (what ``lit-genai fit`` saved), for the networks' configs."""
    from lit_genai.api.load import CONFIG_FILE, read_config

    config = read_config(run / CONFIG_FILE)
    return dict((config or {}).get("model", {}).get("init_args") or {}) or None
