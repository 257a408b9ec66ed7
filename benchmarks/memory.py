"""Peak memory of one training step per paradigm, and activation checkpointing's memory and time.

What it measures
    ``paradigms`` (default): for each MNIST/CPU recipe under ``experiments/`` (``RECIPES``), the
    model and data module the recipe builds (``lit-genai``'s own parser, ``LitGenAICLI(run=False)``,
    so the data-to-model links and the recipe's batch are the recipe's) are trained two batches by a
    bare ``lightning.Trainer`` (the recipe's ``gradient_clip_val`` and ``precision``; no logger,
    checkpoints, EMA or sample callbacks), and the second step is measured: the first allocates the
    optimiser state and lazy buffers, so the second is the steady state.

    ``checkpointing``: the GPT of ``experiments/ar/shakespeare_char_cpu.yaml`` (4 layers, 4 heads,
    128 wide, context 64, batch 12) and the DiT of ``experiments/diffusion/dit_mnist.yaml`` (patch
    4, hidden 128, depth 4, 4 heads, batch 64), each with ``checkpoint_activations`` off and on, in
    a plain loop (AdamW, forward, loss, backward, step): the memory of one step (as above, the
    second step of a fresh process per variant) and the time per step (both variants in one
    process, alternating step by step, median of ``--steps`` each after ``--warmup``).

How the memory is measured (CPU; honest, not exact)
    Every measurement runs in its own fresh Python process, on one torch thread. Before the
    measured step the process's peak resident set (``VmHWM``) is reset to its current resident set
    (writing 5 to ``/proc/self/clear_refs``, Linux); after the step, ``step peak`` = ``VmHWM`` minus
    the resident set at the step's start: the most memory the step held on top of what was already
    resident (weights, optimiser state, data). So that freed tensors leave the resident set, the
    child runs with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (a fixed threshold: blocks of 64 KiB
    and more are mapped and unmapped on free; the default threshold adapts upwards and would keep
    the first step's activations in the heap, where the second step reuses them unseen). Blocks
    under 64 KiB stay in the heap, so small-tensor churn is undercounted; resident pages are 4 KiB
    granules. ``at start`` is the process's whole resident set at the step's start (interpreter,
    torch, Lightning, data, weights), for scale. On a CUDA device use
    ``torch.cuda.max_memory_allocated`` instead; this script measures the CPU.

How to run
    python benchmarks/memory.py                           # every recipe, then checkpointing
    python benchmarks/memory.py --sections checkpointing --steps 20
    python benchmarks/memory.py --recipes vae dcgan
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "diffusion": "experiments/diffusion/mnist.yaml",
    "edm": "experiments/diffusion/edm_mnist.yaml",
    "flow": "experiments/diffusion/flow_mnist.yaml",
    "latent": "experiments/diffusion/latent_mnist.yaml",
    "dit_mnist": "experiments/diffusion/dit_mnist.yaml",
    "dcgan": "experiments/gan/dcgan_mnist.yaml",
    "vae": "experiments/vae/mnist.yaml",
    "pixelcnn_mnist": "experiments/ar/pixelcnn_mnist.yaml",
    "maskgit_mnist": "experiments/masked/maskgit_mnist.yaml",
    "text_demo": "experiments/ar/text_demo.yaml",
    "wavenet_notes": "experiments/audio/wavenet_notes.yaml",
}
GPT_NET = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
DIT_NET = dict(
    in_channels=1, image_size=28, patch_size=4, hidden_size=128, depth=4, num_heads=4, num_classes=10
)
GPT_BATCH, DIT_BATCH, SEED = 12, 64, 0
MIB = 2**20


# -- in the child process ----------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


class StepMemory:
    """Resets the peak resident set before a step and reads it after (module docstring)."""

    def start(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        self.rss = _status_bytes("VmRSS")

    def stop(self) -> dict[str, float]:
        return {"start_mib": self.rss / MIB, "peak_mib": (_status_bytes("VmHWM") - self.rss) / MIB}


def child_recipe(name: str) -> dict:
    """Two steps of the recipe's model on its data; the memory of the second."""
    import torch
    from lightning.pytorch import Callback, Trainer

    from lit_genai.cli import LitGenAICLI

    torch.set_num_threads(1)
    memory, result = StepMemory(), {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            if batch_idx == 1:
                memory.start()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            if batch_idx == 1:
                result.update(memory.stop(), step_s=time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        args = ["--config", RECIPES[name], "--trainer.logger", "false", "--trainer.default_root_dir", tmp]
        cli = LitGenAICLI(args=args, run=False)
        trainer_config = cli.config.trainer
        model, data = cli.model, cli.datamodule
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            limit_train_batches=2,  # two batches (a GAN's two optimisers make two steps per batch)
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            gradient_clip_val=trainer_config.get("gradient_clip_val"),
            precision=trainer_config.get("precision") or "32-true",
            default_root_dir=tmp,
            callbacks=[Probe()],
        )
        trainer.fit(model, datamodule=data)
    batch = getattr(data, "batch_size", None)
    return {**result, "trainable_params": params, "batch_size": batch, "module": type(model).__name__}


def child_checkpointing(net: str, checkpoint: bool) -> dict:
    """Two plain-loop steps of the GPT or DiT (module docstring); the memory of the second."""
    import torch

    torch.set_num_threads(1)
    loop = CheckpointLoop(net, checkpoint)
    loop.step()
    memory = StepMemory()
    memory.start()
    loop.step()
    return memory.stop()


class CheckpointLoop:
    """The GPT or DiT, AdamW and one fixed random batch; ``step`` is one training step."""

    def __init__(self, net: str, checkpoint: bool) -> None:
        import torch

        from lit_genai.nn.dit import DiT
        from lit_genai.nn.transformer import GPT

        torch.manual_seed(SEED)
        g = torch.Generator().manual_seed(SEED + 1)
        self.kind = net
        if net == "gpt":
            self.net = GPT(**GPT_NET, checkpoint_activations=checkpoint).train()
            tokens = torch.randint(
                0, GPT_NET["vocab_size"], (GPT_BATCH, GPT_NET["block_size"] + 1), generator=g
            )
            self.batch = (tokens[:, :-1], tokens[:, 1:])
        else:
            self.net = DiT(**DIT_NET, checkpoint_activations=checkpoint).train()
            x = torch.randn(DIT_BATCH, 1, 28, 28, generator=g)
            self.batch = (
                x,
                torch.randint(0, 1000, (DIT_BATCH,), generator=g),
                torch.randint(0, 10, (DIT_BATCH,), generator=g),
            )
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, foreach=False)

    def step(self) -> float:
        import torch.nn.functional as F

        if self.kind == "gpt":
            x, y = self.batch
            loss = F.cross_entropy(self.net(x).flatten(0, 1), y.flatten())
        else:
            x, t, y = self.batch
            loss = F.mse_loss(self.net(x, t, y), x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


# -- in the parent process ---------------------------------------------------------------------


def run_child(*args: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def paradigms(names: list[str]) -> None:
    print("\nOne training step per recipe (second step of a fresh process, CPU, 1 thread; module docstring)")
    header = f"{'recipe':<16}{'module':<14}{'batch':>6}{'params':>10}{'step peak MiB':>15}"
    header += f"{'at start MiB':>14}{'step s':>8}"
    print(header)
    print("-" * len(header))
    for name in names:
        r = run_child("recipe", name)
        if "peak_mib" not in r:
            r.setdefault("error", "the second step did not run")
        if "error" in r:
            print(f"{name:<16}error: {r['error']}")
            continue
        print(
            f"{name:<16}{r['module']:<14}{r['batch_size'] or '-':>6}{r['trainable_params'] / 1e6:>9.2f}M"
            f"{r['peak_mib']:>15.1f}{r['start_mib']:>14.0f}{r['step_s']:>8.2f}"
        )


def checkpointing(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    print(
        "\nActivation checkpointing (checkpoint_activations), plain loop, CPU, 1 thread: memory of one step "
        f"(fresh process each), time median of {args.steps} alternating steps after {args.warmup}"
    )
    header = f"{'net':<34}{'step peak MiB':>15}{'ms/step':>10}{'mem on/off':>12}{'time on/off':>13}"
    print(header)
    print("-" * len(header))
    for net, what in (
        ("gpt", f"GPT 4x128, ctx 64, batch {GPT_BATCH}"),
        ("dit", f"DiT p4 h128 d4, batch {DIT_BATCH}"),
    ):
        peaks = {on: run_child("checkpointing", net, str(on)) for on in (False, True)}
        loops = {on: CheckpointLoop(net, on) for on in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        losses: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.warmup + args.steps):
            for on in (False, True) if i % 2 == 0 else (True, False):  # alternate who goes first
                start = time.perf_counter()
                losses[on].append(loops[on].step())
                if i >= args.warmup:
                    times[on].append(time.perf_counter() - start)
        ms = {on: statistics.median(times[on]) * 1e3 for on in (False, True)}
        dloss = max(abs(a - b) for a, b in zip(losses[False], losses[True], strict=True))
        for on in (False, True):
            label = f"{what}, {'on' if on else 'off'}"
            mem = peaks[on].get("peak_mib", float("nan"))
            line = f"{label:<34}{mem:>15.1f}{ms[on]:>10.1f}"
            if on:
                off_mem = peaks[False].get("peak_mib", float("nan"))
                line += f"{mem / off_mem:>11.2f}x{ms[True] / ms[False]:>12.2f}x"
            print(line)
        print(f"{'':<34}max |dloss| over {len(losses[True])} steps: {dloss:.1e}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        kind, *rest = argv[1:]
        result = (
            child_recipe(rest[0]) if kind == "recipe" else child_checkpointing(rest[0], rest[1] == "True")
        )
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["paradigms", "checkpointing"],
        default=["paradigms", "checkpointing"],
    )
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (checkpointing)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (checkpointing)")
    args = parser.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        parser.error("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    if "paradigms" in args.sections:
        paradigms(args.recipes)
    if "checkpointing" in args.sections:
        checkpointing(args)


if __name__ == "__main__":
    main()
