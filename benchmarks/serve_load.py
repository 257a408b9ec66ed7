"""Load on ``lit-genai serve``: throughput and latency with server-side batching on and off.

What it measures
    A ``lit-genai serve`` process on 127.0.0.1 (a free port; nothing else is contacted) serving one
    run folder is sent ``--requests`` generation requests (default 200) from ``--clients``
    concurrent clients (default 20, one HTTP session each); request i asks for one sample with seed
    i (``--body`` adds fields, e.g. ``'{"n": 4}'``). Twice, side by side, each with a fresh server:
    with batching (``--max_batch_size``, ``--batch_timeout``: requests with the same options share
    ``module.sample`` calls) and without (``--max_batch_size 1``). For each it prints requests per
    second over the whole run, the p50 and p99 latency of a request, the mean number of requests per
    batch (the ``X-Batch-Requests`` header) and the errors (anything but a 200; must be 0). The
    ``same`` column counts the responses equal byte for byte to the unbatched one of the same seed,
    and ``diff`` is the largest pixel difference of the others (PNG responses): batched float
    kernels round differently (lit_genai/serve/draw.py), so a float model's image can change by one
    level in a rare pixel; tokens (text, audio) keep their bytes. Each run is bounded:
    ``--time_limit`` seconds of sending, ``--request_timeout`` per request; a request not answered in
    time counts as an error. Startup (model loading, workers) is not timed; a few warm-up requests
    precede each run.

How to run
    A tiny run folder (seconds; any run folder of ``lit-genai fit`` will do):
        lit-genai fit --config experiments/diffusion/mnist.yaml --trainer.max_steps 2 \\
            --trainer.default_root_dir runs/tiny-digits --model.init_args.net.init_args.base_channels 8 \\
            --model.init_args.net.init_args.channel_mult '[1]' --model.init_args.net.init_args.num_groups 4 \\
            --model.init_args.net.init_args.attention_levels '[]' --model.init_args.sampling.steps 3
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py runs/tiny-digits --threads 1
    python benchmarks/serve_load.py runs/diffusion-mnist --device cuda --body '{"options": {"steps": 50}}'
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: str, serve_args: list[str], log: Path, startup: float) -> tuple[subprocess.Popen, str]:
    """``python -m lit_genai serve`` on 127.0.0.1 in its own process group, once ``/health`` says ok."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lit_genai",
        "serve",
        "--model",
        f"m={run}",
        "--port",
        str(port),
        *serve_args,
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop(process)
    raise SystemExit(f"the server was not healthy after {startup} s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to the server's process group, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def load(url: str, body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Send the requests from the clients; latencies, statuses, batch sizes and bodies by seed."""
    local = threading.local()
    deadline = time.monotonic() + args.time_limit

    def one(seed: int) -> tuple[int, float, int, Optional[bytes]]:
        if time.monotonic() > deadline:
            return seed, float("nan"), 0, None  # not sent: the run's time is up
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        began = time.perf_counter()
        try:
            response = session.post(
                f"{url}/predict", json={**body, "seed": seed}, timeout=args.request_timeout
            )
        except requests.RequestException:
            return seed, time.perf_counter() - began, 0, None
        batch = int(response.headers.get("X-Batch-Requests", 0))
        ok = response.status_code == 200
        return seed, time.perf_counter() - began, batch, response.content if ok else None

    for seed in range(args.requests, args.requests + 4):  # warm-up, other seeds
        one(seed)
    began = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - began
    answered = [r for r in results if r[3] is not None]
    latencies = sorted(r[1] for r in answered)
    return {
        "wall": wall,
        "errors": len(results) - len(answered),
        "throughput": len(answered) / wall,
        "p50": statistics.quantiles(latencies, n=100)[49] if len(latencies) > 1 else float("nan"),
        "p99": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else float("nan"),
        "batch": statistics.mean(r[2] for r in answered) if answered else float("nan"),
        "bodies": {r[0]: r[3] for r in answered},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder or checkpoint of lit-genai fit")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--body", default="{}", help="JSON fields added to every request")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the model worker")
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--batch_timeout", type=float, default=0.01)
    parser.add_argument("--time_limit", type=float, default=300.0, help="seconds of sending per run")
    parser.add_argument("--request_timeout", type=float, default=120.0)
    parser.add_argument("--startup", type=float, default=600.0, help="seconds a server may take to start")
    args = parser.parse_args()
    if not (1 <= args.requests <= 10_000 and 1 <= args.clients <= 100):
        raise SystemExit("--requests in 1 .. 10000 and --clients in 1 .. 100 (a load test, not a flood)")
    body = json.loads(args.body)
    common = ["--device", args.device, "--max_n", str(max(16, int(body.get("n", 1))))]
    if args.threads:
        common += ["--threads", str(args.threads)]
    modes = {
        "batching": [
            "--max_batch_size",
            str(args.max_batch_size),
            "--batch_timeout",
            str(args.batch_timeout),
        ],
        "no batching": ["--max_batch_size", "1"],
    }
    print(
        f"{args.requests} requests from {args.clients} clients, body {json.dumps(body)}, {args.run} on "
        f"{args.device}, worker threads {args.threads or 'torch default'}"
    )
    results = {}
    for mode, extra in modes.items():
        log = Path(f"serve_load_{mode.replace(' ', '_')}.log")
        process, url = start(args.run, [*common, *extra], log, args.startup)
        try:
            results[mode] = load(url, body, args)
        finally:
            stop(process)
        log.unlink(missing_ok=True)
    reference = results["no batching"]["bodies"]
    header = ("mode", "req/s", "p50 ms", "p99 ms", "batch", "errors", "same", "diff")
    print("{:<12} {:>7} {:>8} {:>8} {:>6} {:>6} {:>9} {:>4}".format(*header))
    for mode, r in results.items():
        pairs = [(content, reference[seed]) for seed, content in r["bodies"].items() if seed in reference]
        same = sum(a == b for a, b in pairs)
        diff = max((pixel_difference(a, b) for a, b in pairs if a != b), default=0)
        print(
            f"{mode:<12} {r['throughput']:7.1f} {1000 * r['p50']:8.0f} {1000 * r['p99']:8.0f} "
            f"{r['batch']:6.2f} {r['errors']:6d} {f'{same}/{len(pairs)}':>9} {diff:>4}"
        )


def pixel_difference(a: bytes, b: bytes) -> object:
    """The largest difference of two PNGs' pixels; "-" for bodies that are not PNGs."""
    if not (a.startswith(b"\x89PNG") and b.startswith(b"\x89PNG")):
        return "-"
    import io

    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(blob)), dtype=np.int16) for blob in (a, b))
    return int(np.abs(x - y).max())


if __name__ == "__main__":
    main()
