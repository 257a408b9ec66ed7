"""Training throughput of one GPT step: plain PyTorch vs ``lit_genai`` on Lightning, eager and compiled.

What it measures
    Milliseconds per training step of the character-level GPT of
    ``experiments/ar/shakespeare_char_cpu.yaml`` (nanoGPT's CPU line: 4 layers, 4 heads, 128 wide,
    context 64, no dropout, no biases; batch 12 x 64 characters) on the same batches of
    ``CharText(name="pydoc_topics")`` (offline), in one run, side by side:

    - ``plain PyTorch``: a hand-written loop in the style of nanoGPT's ``train.py`` (the same
      ``lit_genai.nn.transformer.GPT``, cross-entropy over every position, AdamW with the same
      parameter groups, the nanoGPT warm-up + cosine LR set every step through the same LambdaLR,
      gradient clipping 1.0; no Lightning): the reference;
    - ``Lightning``: ``lit_genai.ar.module.NextToken`` driven by ``lightning.Trainer``
      (``gradient_clip_val=1.0``, logger off, no checkpointing, no progress bar, no validation),
      logging ``train/loss`` every step;
    - with ``--compile`` (the default when torch.compile works here): the same two with
      ``torch.compile`` of the network (``NextToken(compile=True)`` on the Lightning side). The
      first steps compile, so ``--warmup`` should cover them; compilation time is not in the table.

    One step is timed as the wall-clock interval between the ends of two consecutive steps
    (``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU), so it includes fetching the
    batch and every hook Lightning runs between steps. The first ``--warmup`` steps are discarded;
    the table reports the median over the timed steps of all ``--rounds`` (the variants take turns,
    so a machine whose speed drifts slows each alike). Every variant starts from the same weights on
    the same batches with no randomness (dropout 0), so the eager losses agree to float round-off
    and the compiled ones closely: the ``max |dloss|`` column checks that the loops do the same work.

How to run
    python benchmarks/gpt_step.py                         # 100 timed steps, eager and compiled
    python benchmarks/gpt_step.py --no-compile --threads 2
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from lit_genai.ar.module import NextToken, nanogpt_lr, parameter_groups
from lit_genai.data.text import CharText
from lit_genai.nn.transformer import GPT

NET = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
LR, MIN_LR, BETAS, WEIGHT_DECAY, WARMUP, CLIP = 1e-3, 1e-4, (0.9, 0.99), 0.1, 100, 1.0
SEED = 0


def make_batches(batch_size: int, n: int) -> tuple[list[tuple[Tensor, Tensor]], int]:
    """``n`` training batches (x, y) of (B, 64) int64 windows of the help topics, and V."""
    dm = CharText(name="pydoc_topics", block_size=NET["block_size"], batch_size=batch_size, seed=SEED)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    return [next(loader) for _ in range(n)], dm.vocab_size


def build_net(vocab_size: int) -> GPT:
    torch.manual_seed(SEED)  # same initial weights in every variant
    return GPT(vocab_size, **NET)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Per-step seconds of the timed steps: intervals between consecutive step ends."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def run_plain(
    batches: list, vocab_size: int, device: torch.device, warmup: int, compile: bool
) -> tuple[list[float], list[float]]:
    """The hand-written loop; returns (timed step seconds, per-step losses)."""
    net = build_net(vocab_size).to(device).train()
    model = torch.compile(net) if compile else net
    opt = torch.optim.AdamW(parameter_groups(net, WEIGHT_DECAY), lr=LR, betas=BETAS)
    decay_steps = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: nanogpt_lr(step, LR, WARMUP, decay_steps, MIN_LR) / LR
    )
    losses, ends = [], []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        sync(device)
        ends.append(time.perf_counter())
    return step_times(ends, warmup), [float(v) for v in losses]


class StepTimer(Callback):
    """Records the end time and loss of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())
        sync(pl_module.device)
        self.ends.append(time.perf_counter())


def run_lightning(
    batches: list, vocab_size: int, device: torch.device, warmup: int, compile: bool
) -> tuple[list[float], list[float]]:
    """NextToken on lightning.Trainer; returns (timed step seconds, per-step losses)."""
    model = NextToken(
        build_net(vocab_size),
        vocab_size=vocab_size,
        block_size=NET["block_size"],
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, betas=BETAS),
        weight_decay=WEIGHT_DECAY,
        warmup_steps=WARMUP,
        lr_decay_steps=len(batches),
        min_lr=MIN_LR,
        compile=compile,
    )
    timer = StepTimer()
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        max_steps=len(batches),
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[timer],
    )
    # batch_size=None: the DataLoader hands over the prepared batches unchanged.
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return step_times(timer.ends, warmup), [float(v) for v in timer.losses]


def compile_works() -> bool:
    """Whether torch.compile (inductor) runs here: it needs a C compiler on the CPU."""
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    except Exception:  # a missing compiler surfaces as one of several backend errors
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10, >= 1)")
    parser.add_argument("--batch-size", type=int, default=12, help="sequences per step (default 12)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="run the variants in turn this many times")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="also time torch.compile"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.batch_size, args.threads, args.rounds) < 1:
        parser.error("--steps, --warmup, --batch-size, --threads and --rounds must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on recent torch
    warnings.filterwarnings("ignore", message=".*Tensor Cores.*")

    compile = compile_works() if args.compile is None else args.compile
    device = torch.device(args.device)
    batches, vocab_size = make_batches(args.batch_size, args.warmup + args.steps)
    n_params = build_net(vocab_size).num_params()
    variants = {"plain PyTorch": (run_plain, False), "Lightning": (run_lightning, False)}
    if compile:
        variants.update({"plain + compile": (run_plain, True), "Lightning + compile": (run_lightning, True)})
    results: dict[str, tuple[list[float], list[float]]] = {}
    for _ in range(args.rounds):
        for name, (run, compiled) in variants.items():
            times, losses = run(batches, vocab_size, device, args.warmup, compiled)
            results[name] = (results.get(name, ([], losses))[0] + times, losses)

    print(
        f"\nGPT training step (4 layers, 4 heads, 128 wide, context 64, {n_params / 1e6:.2f}M params, "
        f"V={vocab_size}), batch {args.batch_size} x {NET['block_size']}, {args.device}, torch threads "
        f"{args.threads}, median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up each"
    )
    header = f"{'variant':<21}{'ms/step':>9}{'min ms':>9}{'vs plain':>10}{'tok/s':>9}{'max |dloss|':>13}"
    print(header)
    print("-" * len(header))
    plain_ms, plain_losses = statistics.median(results["plain PyTorch"][0]) * 1e3, results["plain PyTorch"][1]
    ratios = {}
    tokens = args.batch_size * NET["block_size"]
    for name, (times, losses) in results.items():
        median = statistics.median(times) * 1e3
        ratios[name] = median / plain_ms
        dloss = max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True))
        print(
            f"{name:<21}{median:>9.2f}{min(times) * 1e3:>9.2f}{ratios[name]:>9.3f}x"
            f"{tokens / median * 1e3:>9.0f}{dloss:>13.2e}"
        )
    line = f"\nlightning / plain = {ratios['Lightning']:.3f}x step time (1.00x = no overhead)"
    if compile:
        compiled = results["plain + compile"][0]
        line += (
            f"; compiled lightning / compiled plain = "
            f"{statistics.median(results['Lightning + compile'][0]) / statistics.median(compiled):.3f}x"
        )
    print(line)


if __name__ == "__main__":
    main()
