"""``lit-genai serve``: trained models behind an HTTP service (LitServe), with an optional web page.

    lit-genai serve --model digits=runs/diffusion-mnist --model text=runs/ar-text_demo --ui
    curl -X POST localhost:8000/predict -d '{"model": "digits", "label": 7, "seed": 3}' -o seven.png

``main`` loads each model once in this process, on the CPU, to read what requests may ask of it
(``catalog.describe``) and to stop with one line on a bad checkpoint or a default beyond a limit
before any worker starts; LitServe's worker then loads it again on ``--device``. The endpoints
(docs/architecture.md, "Serve"): ``POST /predict`` (``requests.py`` the request, ``responses.py`` the
answer), ``POST /stream`` when a text model is served, LitServe's ``GET /health`` and ``GET /info``
(its ``model`` entry: models, paradigms, modalities, classes, sampling options with defaults, limits)
and, with ``--ui``, the page at ``GET /ui``.

Safe defaults: the service listens on 127.0.0.1 only (``--host 0.0.0.0`` to open it), bodies are
limited to ``--max_payload_size`` bytes (an integer: LitServe 0.2.19 answers 500 to every request
when given a string such as "50MB"), ``n``, ``steps``, ``max_new_tokens`` and prompts are bounded,
and a request is never cut at LitServe's default 30 s (``--timeout 0``: none). An API key is
LitServe's: set the environment variable ``LIT_SERVER_API_KEY`` and clients send ``X-API-Key``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

from lit_genai.errors import ConfigError
from lit_genai.serve.requests import Limits

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the hosts LitServer.run accepts


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one ``ConfigError`` line (``cli.main`` prints it, exit 1)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"serve: {message} (see lit-genai serve --help)")


def parser() -> argparse.ArgumentParser:
    """The options of ``lit-genai serve``."""
    p = _Parser(prog="lit-genai serve", description="Serve trained models' samples over HTTP (LitServe).")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a run folder or checkpoint to serve as NAME (default: the run folder's name); repeat for more",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", choices=HOSTS, help="interface to listen on (default: local only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port, 1024 .. 65535 (default 8000)")
    p.add_argument("--ui", action="store_true", help="serve the web playground at /ui")
    p.add_argument("--max_batch_size", type=int, default=8, help="requests per batch (1: no batching)")
    p.add_argument("--batch_timeout", type=float, default=0.01, help="seconds a batch waits to fill")
    p.add_argument(
        "--timeout", type=float, default=0, help="seconds a request may wait and run (0: no limit)"
    )
    p.add_argument("--max_n", type=int, default=Limits.max_n, help="samples per request")
    p.add_argument("--max_steps", type=int, default=Limits.max_steps, help="largest sampling option steps")
    p.add_argument("--max_new_tokens", type=int, default=Limits.max_new_tokens, help="largest max_new_tokens")
    p.add_argument("--max_prompt", type=int, default=Limits.max_prompt, help="characters of a prompt")
    p.add_argument(
        "--max_payload_size",
        type=int,
        default=Limits.max_payload_size,
        help="bytes of a request body (an integer)",
    )
    p.add_argument("--stream_tokens", type=int, default=4, help="new tokens per /stream event")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)"
    )
    p.add_argument("--workers_per_device", type=int, default=1, help="model workers per device")
    p.add_argument("--no_ema", action="store_true", help="serve the training weights, not the EMA average")
    p.add_argument("--log_level", default="warning", help="LitServe's and uvicorn's log level")
    return p


def main(args: list[str]) -> None:
    """``lit-genai serve ARGS``: load the models, then serve until interrupted (module docstring)."""
    options = parser().parse_args(args)
    server = build_server(options)
    print(_banner(options, server.model_metadata), flush=True)
    server.run(host=options.host, port=options.port, log_level=options.log_level, generate_client_file=False)


def build_server(options: argparse.Namespace) -> Any:
    """The ``LitServer`` of the parsed options (models read, limits checked, page added)."""
    try:
        import litserve as ls
    except ImportError:
        raise ConfigError("lit-genai serve needs LitServe: pip install 'lit_genai[serve]'") from None
    from lit_genai.api import load
    from lit_genai.serve.api import GenerationAPI, StreamAPI
    from lit_genai.serve.catalog import check_defaults, describe, info_json
    from lit_genai.serve.check import RequestCheck
    from lit_genai.serve.ui import PATH, add_page

    _check_numbers(options)
    accelerator, devices = device_of(options.device)
    limits = Limits(
        max_n=options.max_n,
        max_steps=options.max_steps,
        max_new_tokens=options.max_new_tokens,
        max_prompt=options.max_prompt,
        max_payload_size=options.max_payload_size,
    )
    sources = model_sources(options.model)
    catalog = {}
    for name, path in sources.items():  # on the CPU, to know the model before a worker loads it
        info = describe(name, load(path, device="cpu", ema=not options.no_ema))
        check_defaults(info, limits.bounds())
        catalog[name] = info
    common = dict(ema=not options.no_ema, threads=options.threads)
    batching = dict(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout)
    apis = [GenerationAPI(sources, catalog, limits, **batching, **common)]
    paths = {"/predict": False}
    if any(info.streams for info in catalog.values()):
        apis.append(StreamAPI(sources, catalog, limits, stream_tokens=options.stream_tokens, **common))
        paths["/stream"] = True
    metadata = {
        "service": "lit-genai serve",
        "paths": {
            "predict": "/predict",
            "stream": "/stream" if "/stream" in paths else None,
            "ui": PATH if options.ui else None,
        },
        "limits": {**vars(limits)},
        "models": {name: info_json(info, limits.bounds()) for name, info in catalog.items()},
    }
    server = ls.LitServer(
        apis,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=options.workers_per_device,
        timeout=options.timeout if options.timeout > 0 else False,
        max_payload_size=limits.max_payload_size,
        model_metadata=metadata,
        middlewares=[(RequestCheck, {"catalog": catalog, "limits": limits, "paths": paths})],
    )
    if options.ui:
        add_page(server.app)
    return server


def model_sources(specs: list[str]) -> dict[str, str]:
    """``[NAME=]PATH`` options -> {name: path}; a name defaults to the run folder's name."""
    sources: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        name = name or _run_name(Path(path))
        if name in sources:
            raise ConfigError(
                f"--model {spec}: the name {name!r} is given twice: name each model (NAME=PATH)"
            )
        sources[name] = path
    return sources


def device_of(device: Optional[str]) -> tuple[str, Any]:
    """``--device`` -> LitServer's (accelerator, devices)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ConfigError(f"--device {device}: give cpu, cuda, cuda:N or mps")
    if kind == "cpu":
        return "cpu", 1
    count = torch.cuda.device_count() if kind == "cuda" else int(torch.backends.mps.is_available())
    if (int(index) if index else 0) >= count:  # else each worker would fail to start with a traceback
        raise ConfigError(f"--device {device}: this machine has {count} {kind} device(s); use --device cpu")
    return kind, [int(index)] if index else 1


def _run_name(path: Path) -> str:
    path = path.expanduser()
    if path.suffix == ".ckpt":
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path.resolve().name or "model"


def _check_numbers(options: argparse.Namespace) -> None:
    if not 1024 <= options.port <= 65535:
        raise ConfigError(f"--port {options.port}: give a port in 1024 .. 65535")
    for name in ("max_batch_size", "max_n", "max_steps", "max_new_tokens", "max_prompt", "max_payload_size"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name} {getattr(options, name)}: give a positive integer")
    if options.stream_tokens < 1 or options.workers_per_device < 1 or options.batch_timeout < 0:
        raise ConfigError("--stream_tokens and --workers_per_device must be >= 1, --batch_timeout >= 0")


def _banner(options: argparse.Namespace, metadata: dict[str, Any]) -> str:
    """What is served where, in a few lines."""
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    url = f"http://{host}:{options.port}"
    models = ", ".join(f"{name} ({m['paradigm']}, {m['modality']})" for name, m in metadata["models"].items())
    paths = [f"POST {url}{p}" for p in (metadata["paths"]["predict"], metadata["paths"]["stream"]) if p]
    paths += [f"GET {url}/info", f"GET {url}/health"]
    if metadata["paths"]["ui"]:
        paths.append(f"page {url}{metadata['paths']['ui']}")
    key = "; requests need the X-API-Key header" if os.environ.get("LIT_SERVER_API_KEY") else ""
    return f"lit-genai serve: {models}{key}\n  " + "\n  ".join(paths)
