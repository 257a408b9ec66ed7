"""What the service tests share: tiny trained run folders and one ``lit-genai serve`` process on
127.0.0.1 for the session (tests/test_serve.py, tests/test_serve_ui.py; the fixture
``serve_server`` of conftest.py): starting a service costs three Python processes that each import
torch and Lightning (the command, the ``/predict`` worker, the ``/stream`` worker), so the two test
modules share one.

The run folders are what ``lit-genai fit`` writes (``config.yaml`` + ``checkpoints/last.ckpt``), made
by ``fit`` itself for 2 steps on data that needs no download, at the sizes of tests/test_contract.py:
a class-conditional diffusion model of MNIST5k digits (image), a character GPT of the standard
library's help topics (text) and a WaveNet of procedural notes (audio). They are made once per test
session, in pytest's base temporary folder, and shared by the modules that ask for them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers import TINY_CLI_TRAINER, run_cli

ROOT = Path(__file__).resolve().parents[1]

# name -> (experiment, overrides): tiny networks, 2 optimisation steps, no validation.
TINY_RUNS = {
    "image": (
        "experiments/diffusion/mnist.yaml",
        {
            "model": {
                "init_args": {
                    "net": {
                        "init_args": {
                            "base_channels": 8,
                            "channel_mult": [1],
                            "num_res_blocks": 1,
                            "num_groups": 4,
                            "attention_levels": [],
                        }
                    },
                    "num_timesteps": 30,
                    "warmup_steps": 0,
                    "sampling": {"steps": 3},
                }
            },
            "data": {"init_args": {"batch_size": 4, "predict_samples": 3}},
        },
    ),
    "text": (
        "experiments/ar/text_demo.yaml",
        {
            "model": {
                "init_args": {
                    "net": {"init_args": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}},
                    "warmup_steps": 0,
                    "lr_decay_steps": 2,
                    "sampling": {"max_new_tokens": 12},
                }
            },
            "data": {"init_args": {"block_size": 16, "batch_size": 4, "predict_samples": 2}},
        },
    ),
    "audio": (
        "experiments/audio/wavenet_notes.yaml",
        {
            "model": {
                "init_args": {
                    "net": {
                        "init_args": {
                            "residual_channels": 4,
                            "gate_channels": 8,
                            "skip_channels": 8,
                            "layers_per_stack": 3,
                            "stacks": 1,
                            "block_size": 399,
                        }
                    },
                    "warmup_steps": 0,
                    "sampling": {"max_new_tokens": 40},
                }
            },
            "data": {
                "init_args": {
                    "clip_seconds": 0.1,
                    "num_clips": 8,
                    "val_clips": 2,
                    "crop_length": 399,
                    "batch_size": 2,
                    "predict_samples": 2,
                }
            },
        },
    ),
}


KEY = "test-key"  # the server's LIT_SERVER_API_KEY
LIMITS = {"max_n": 4, "max_steps": 50, "max_new_tokens": 64, "max_prompt": 40, "max_payload_size": 4000}
# Small limits, so that each refusal is cheap to provoke; batching on, with time for batches to fill.
SERVE_ARGS = [
    *(a for name, value in LIMITS.items() for a in (f"--{name}", str(value))),
    *("--max_batch_size", "4", "--batch_timeout", "0.3", "--ui"),
]


def run_args(base: Path, name: str) -> list[str]:
    """The ``--config`` arguments of tiny run ``name`` (for ``fit`` and ``predict``)."""
    experiment, overrides = TINY_RUNS[name]
    trainer = {
        **TINY_CLI_TRAINER,
        "max_steps": 2,
        "limit_val_batches": 0,
        "default_root_dir": str(base / name),
    }
    path = base / f"{name}.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump({**overrides, "trainer": trainer, "samples": {"num_samples": 2}}))
    return ["--config", str(ROOT / experiment), "--config", str(path)]


def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """{image, text, audio: run folder}, fitted once per session (module docstring)."""
    base = tmp_path_factory.getbasetemp() / "serve-runs"
    base.mkdir(exist_ok=True)
    for name in TINY_RUNS:
        if not (base / name / "checkpoints" / "last.ckpt").is_file():
            assert run_cli(["fit", *run_args(base, name)]) == 0, f"the tiny {name} run did not fit"
    return {name: base / name for name in TINY_RUNS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m lit_genai serve ARGS`` on 127.0.0.1, in its own process group, until ``stop``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, startup: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        command = [
            sys.executable,
            "-m",
            "lit_genai",
            "serve",
            "--device",
            "cpu",
            "--port",
            str(self.port),
            *args,
        ]
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait(startup, env.get("LIT_SERVER_API_KEY"))

    def _wait(self, startup: float, key: str | None) -> None:
        import requests

        headers = {"X-API-Key": key} if key else {}
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"lit-genai serve exited ({self.process.returncode}):\n{self.log.read_text()}"
                )
            try:
                if requests.get(f"{self.url}/health", headers=headers, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"lit-genai serve was not healthy after {startup} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Ctrl-C to the server's process group (LitServe shuts its workers down), then SIGKILL (a
        process started by a non-interactive shell's ``&`` ignores SIGINT)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def shared_server(tmp_path_factory):
    """The session's server (module docstring): the image, text and audio runs as ``image``,
    ``text``, ``audio``, with ``SERVE_ARGS`` and the API key ``KEY``; yields the ``Server``."""
    runs = tiny_runs(tmp_path_factory)
    models = [a for name in ("image", "text", "audio") for a in ("--model", f"{name}={runs[name]}")]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = Server([*models, *SERVE_ARGS], env={"LIT_SERVER_API_KEY": KEY}, log=log)
    try:
        yield server
    finally:
        server.stop()
