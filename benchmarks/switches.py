"""Speed switches on one training step: each against the baseline, in one run, and the DataLoader's.

What it measures
    Milliseconds per training step (forward, loss, backward, optimiser step) of two networks, with
    one switch on at a time against the baseline (float32, eager, contiguous, ``AdamW`` with its
    for-loop update, ``foreach=False``):

    - ``unet``: the demo UNet of ``experiments/diffusion/mnist.yaml`` (read from the YAML) on
      MNIST-shaped random data, batch 64: x (64, 1, 28, 28), labels, uniform timesteps, the
      noise-prediction MSE of the linear schedule;
    - ``gpt``: the GPT of ``experiments/ar/shakespeare_char_cpu.yaml`` (4 layers, 4 heads, 128
      wide, context 64, batch 12) on random tokens of a 65-symbol vocabulary, cross-entropy at every
      position.

    The switches, as a plain loop turns them on (what the project's options do):

    - ``compile``: ``torch.compile(net)`` (``NextToken(compile=True)`` on the GPT; inductor);
    - ``channels_last``: net and inputs in ``torch.channels_last`` (4-D tensors: UNet only);
    - ``bf16 autocast``: ``torch.autocast(device, torch.bfloat16)`` over forward and loss, as
      ``--trainer.precision bf16-mixed`` wraps ``training_step``;
    - ``AdamW foreach`` / ``AdamW fused``: ``optimizer.init_args.foreach: true`` / ``fused: true``.

    All variants live in one process, from the same initial weights, and take turns step by step
    (one step each, the first variant rotating), so a machine whose speed drifts slows each alike;
    the first ``--warmup`` steps of each are untimed (they hold compilation, reported as the
    ``warm-up s`` column), and the table gives the median ms/step of the next ``--steps`` and the
    ratio to the baseline's (< 1: faster).

    ``loader``: batches per second of iterating the training DataLoader of the bundled
    ``MNIST5k`` data module (batch 64, 2 epochs, so a persistent worker pool is reused in the second
    one), through ``lit_genai.data.order.training_loader`` as the data modules build it, with
    workers 0 / 2, ``pin_memory`` on / off and ``persistent_workers`` on / off (persistent needs
    workers), median of ``--rounds`` measurements, the variants in turn. Pinning copies each batch
    into page-locked memory for a faster host-to-GPU copy; it only helps with a GPU (torch ignores
    it, with a warning, when no accelerator is present).

How to run
    python benchmarks/switches.py                                  # all sections, 1 thread
    python benchmarks/switches.py --sections unet gpt --no-compile
    python benchmarks/switches.py --sections loader
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from lit_genai.data import MNIST5k
from lit_genai.data.order import training_loader
from lit_genai.diffusion.schedules import make_betas, q_sample, schedule_tensors
from lit_genai.nn import UNet
from lit_genai.nn.transformer import GPT

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "experiments" / "diffusion" / "mnist.yaml"
GPT_NET = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
GPT_BATCH, UNET_BATCH, LR, SEED = 12, 64, 1e-3, 0


def unet_args() -> dict:
    with open(DEMO_CONFIG) as f:
        return dict(yaml.safe_load(f)["model"]["init_args"]["net"]["init_args"])


class Loop:
    """One network, its AdamW, and one switch; ``step`` runs one training step."""

    def __init__(self, kind: str, switch: str, device: torch.device) -> None:
        torch.manual_seed(SEED)  # the same initial weights in every variant
        self.kind, self.switch, self.device = kind, switch, device
        self.net = (UNet(**unet_args()) if kind == "unet" else GPT(**GPT_NET)).to(device).train()
        self.memory_format = torch.channels_last if switch == "channels_last" else torch.contiguous_format
        if switch == "channels_last":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = torch.compile(self.net) if switch == "compile" else self.net
        options = {"AdamW foreach": dict(foreach=True), "AdamW fused": dict(fused=True)}
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=LR, **options.get(switch, dict(foreach=False)))
        self.alpha_bar = schedule_tensors(make_betas("linear", 1000))["alpha_bar"].to(device)
        self.generator = torch.Generator().manual_seed(SEED + 1)

    def batch(self) -> tuple[Tensor, ...]:
        g = self.generator
        if self.kind == "gpt":
            tokens = torch.randint(
                0, GPT_NET["vocab_size"], (GPT_BATCH, GPT_NET["block_size"] + 1), generator=g
            )
            return tokens[:, :-1].to(self.device), tokens[:, 1:].to(self.device)
        x0 = torch.rand(UNET_BATCH, 1, 28, 28, generator=g) * 2 - 1  # MNIST-shaped, in [-1, 1]
        y = torch.randint(0, 10, (UNET_BATCH,), generator=g)
        t = torch.randint(0, 1000, (UNET_BATCH,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        return tuple(v.to(self.device) for v in (x0, y, t, eps))

    def step(self) -> None:
        batch = self.batch()
        bf16 = self.switch == "bf16 autocast"
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        with autocast:
            if self.kind == "gpt":
                x, y = batch
                logits = self.model(x)  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            else:
                x0, y, t, eps = batch
                x_t = q_sample(x0, t, eps, self.alpha_bar).contiguous(memory_format=self.memory_format)
                loss = F.mse_loss(self.model(x_t, t, y).float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def bench_steps(kind: str, switches: list[str], args: argparse.Namespace, device: torch.device) -> None:
    loops = {switch: Loop(kind, switch, device) for switch in ["baseline", *switches]}
    names = list(loops)
    times: dict[str, list[float]] = {name: [] for name in names}
    warm: dict[str, float] = dict.fromkeys(names, 0.0)
    for i in range(args.warmup + args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # a new first variant each step
            start = time.perf_counter()
            loops[name].step()
            elapsed = time.perf_counter() - start
            if i < args.warmup:
                warm[name] += elapsed
            else:
                times[name].append(elapsed)
    what = (
        f"demo UNet ({sum(p.numel() for p in loops['baseline'].net.parameters()) / 1e6:.2f}M params), "
        f"batch {UNET_BATCH} x 1 x 28 x 28"
        if kind == "unet"
        else f"GPT 4 x 128 ({sum(p.numel() for p in loops['baseline'].net.parameters()) / 1e6:.2f}M params), "
        f"batch {GPT_BATCH} x {GPT_NET['block_size']}"
    )
    print(
        f"\n{kind}: {what}, {device.type}, torch threads {torch.get_num_threads()}, "
        f"median of {args.steps} steps each, variants in turn step by step, after {args.warmup} warm-up each"
    )
    header = f"{'variant':<16}{'ms/step':>10}{'min ms':>10}{'vs baseline':>13}{'warm-up s':>11}"
    print(header)
    print("-" * len(header))
    base = statistics.median(times["baseline"])
    for name, t in times.items():
        median = statistics.median(t)
        print(
            f"{name:<16}{median * 1e3:>10.1f}{min(t) * 1e3:>10.1f}{median / base:>12.3f}x{warm[name]:>11.1f}"
        )


def bench_loader(args: argparse.Namespace) -> None:
    dm = MNIST5k(batch_size=UNET_BATCH)
    dm.setup("fit")
    variants = [(0, False, False), (0, True, False), (2, False, False), (2, False, True), (2, True, True)]
    rates: dict[tuple, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for workers, pin, persistent in variants:
            loader = training_loader(dm.train_set, UNET_BATCH, workers)
            # The data modules' loader, with the two flags set as this variant asks.
            loader = type(loader)(
                dm.train_set,
                batch_size=UNET_BATCH,
                sampler=loader.sampler,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=persistent,
                generator=loader.generator,
            )
            n, start = 0, time.perf_counter()
            for epoch in range(2):
                loader.sampler.set_epoch(epoch)
                for _ in loader:
                    n += 1
            rates[(workers, pin, persistent)].append(n / (time.perf_counter() - start))
            del loader
    print(
        f"\nloader: MNIST5k training DataLoader, batch {UNET_BATCH}, 2 epochs per measurement "
        f"(worker start-up included), median of {args.rounds}; cuda available: {torch.cuda.is_available()}"
    )
    header = f"{'workers':>8}{'pin':>6}{'persistent':>12}{'batches/s':>11}{'vs 0 workers':>14}"
    print(header)
    print("-" * len(header))
    base = statistics.median(rates[variants[0]])
    for (workers, pin, persistent), r in rates.items():
        rate = statistics.median(r)
        print(f"{workers:>8}{pin!s:>6}{persistent!s:>12}{rate:>11.1f}{rate / base:>13.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", nargs="+", choices=["unet", "gpt", "loader"], default=["unet", "gpt", "loader"]
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="timed steps per variant per round (default 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (default 3; covers compilation)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="loader measurements per variant (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out (slow to compile on CPU)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.rounds, args.threads) < 1:
        parser.error("--steps, --warmup, --rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # pinning without an accelerator
    device = torch.device(args.device)
    common = [] if args.no_compile else ["compile"]
    common += ["bf16 autocast", "AdamW foreach", "AdamW fused"]
    if "unet" in args.sections:
        bench_steps("unet", ["channels_last", *common], args, device)
    if "gpt" in args.sections:
        bench_steps("gpt", common, args, device)
    if "loader" in args.sections:
        bench_loader(args)


if __name__ == "__main__":
    main()
