"""Training throughput of one GPT step: plain PyTorch vs ``lit_genai`` on Lightning (compile, bf16).

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
      first steps compile, so ``--warmup`` should cover them; compilation time is not in the table;
    - with ``--precision 32-true bf16-mixed`` (or ``bf16-mixed`` alone): also (or only) bfloat16
      autocast: Lightning's precision plugin (``Trainer(precision="bf16-mixed")``) on our side,
      ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the forward pass and the loss in
      the plain loop (weights, gradients and AdamW stay float32 on both). Each precision is paired
      with the plain loop of the same precision, eager and compiled alike.

    The two loops run paired, step by step in one process (a callback runs the plain step on the
    same batch after each Lightning step): a Lightning step is the interval from the end of the
    previous plain step to the end of the Lightning step (batch fetch and every hook Lightning runs
    included), a plain step the interval around it (``time.perf_counter``, after
    ``torch.cuda.synchronize`` on a GPU). Alternating step by step makes a machine whose speed
    drifts (other processes, clock changes) slow both alike; timing the variants one after the other
    gave ratios from 0.89x to 1.21x on the same code. The first ``--warmup`` steps of each pair are
    discarded (they also cover compilation); the table reports the median over all ``--rounds``.
    Both start from the same weights on the same batches with no randomness (dropout 0), so their
    losses agree to float round-off: the ``max |dloss|`` column checks that they do the same work.

How to run
    python benchmarks/gpt_step.py                         # 100 timed steps, eager and compiled
    python benchmarks/gpt_step.py --no-compile --threads 2
    python benchmarks/gpt_step.py --precision 32-true bf16-mixed   # fp32, bf16, compile, compile + bf16

    bf16 pays off only where the hardware has bfloat16 matrix units (recent GPUs; on the CPU, AMX
    or AVX512-BF16): elsewhere the casts make it slower than float32.
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


class PlainLoop:
    """The hand-written loop, one ``step`` at a time: the reference."""

    def __init__(
        self, vocab_size: int, device: torch.device, steps: int, compile: bool, bf16: bool = False
    ) -> None:
        self.net = build_net(vocab_size).to(device).train()
        self.model = torch.compile(self.net) if compile else self.net
        self.opt = torch.optim.AdamW(parameter_groups(self.net, WEIGHT_DECAY), lr=LR, betas=BETAS)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: nanogpt_lr(step, LR, WARMUP, steps, MIN_LR) / LR
        )
        self.device, self.bf16 = device, bf16

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = x.to(self.device), y.to(self.device)
        # bf16: autocast over forward and loss, as Lightning's MixedPrecision wraps training_step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), CLIP)
        self.opt.step()
        self.sched.step()
        return loss.detach()


class Paired(Callback):
    """After each Lightning step, runs one plain step on the same batch and times both.

    Step i of Lightning is the interval from the end of the plain step i - 1 to the end of the
    Lightning step i (so it holds the batch fetch and every hook Lightning runs between steps);
    plain step i is the interval around ``PlainLoop.step``. The two alternate step by step, so a
    machine whose speed drifts (other processes, clock changes) slows both alike.
    """

    def __init__(self, plain: PlainLoop, batches: list) -> None:
        self.plain, self.batches = plain, batches
        self.lightning: list[float] = []
        self.plain_times: list[float] = []
        self.losses: list[tuple[float, float]] = []
        self.last = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.last = time.perf_counter()  # the first interval excludes Lightning's set-up

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        sync(pl_module.device)
        end = time.perf_counter()
        self.lightning.append(end - self.last)
        plain_loss = self.plain.step(*self.batches[batch_idx])
        sync(pl_module.device)
        self.last = time.perf_counter()
        self.plain_times.append(self.last - end)
        self.losses.append((float(outputs["loss"]), float(plain_loss)))


def run_pair(
    batches: list, vocab_size: int, device: torch.device, compile: bool, precision: str = "32-true"
) -> Paired:
    """NextToken on lightning.Trainer, paired step by step with the plain loop."""
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
    bf16 = precision == "bf16-mixed"
    pair = Paired(PlainLoop(vocab_size, device, len(batches), compile, bf16), batches)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        max_steps=len(batches),
        precision=precision,
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[pair],
    )
    # batch_size=None: the DataLoader hands over the prepared batches unchanged.
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return pair


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
        "--precision",
        nargs="+",
        choices=["32-true", "bf16-mixed"],
        default=["32-true"],
        help="one or both: float32 and/or bfloat16 autocast (default 32-true)",
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
    precisions = list(dict.fromkeys(args.precision))  # in the order given, once each
    modes = [(c, p) for c in ([False, True] if compile else [False]) for p in precisions]
    times: dict[str, list[float]] = {}
    dloss: dict[str, float] = {}
    for _ in range(args.rounds):
        for compiled, precision in modes:
            pair = run_pair(batches, vocab_size, device, compiled, precision)
            suffix = (" + compile" if compiled else "") + (" + bf16" if precision == "bf16-mixed" else "")
            for name, seconds in (("plain", pair.plain_times), ("Lightning", pair.lightning)):
                times.setdefault(name + suffix, []).extend(seconds[args.warmup :])
            dloss["Lightning" + suffix] = max(abs(a - b) for a, b in pair.losses)
            dloss["plain" + suffix] = 0.0

    print(
        f"\nGPT training step (4 layers, 4 heads, 128 wide, context 64, {n_params / 1e6:.2f}M params, "
        f"V={vocab_size}), batch {args.batch_size} x {NET['block_size']}, {args.device}, torch threads "
        f"{args.threads}, median of {args.rounds} x {args.steps} paired steps after {args.warmup} warm-up"
    )
    header = (
        f"{'variant':<28}{'ms/step':>9}{'min ms':>9}{'vs plain':>10}{'vs fp32':>9}{'tok/s':>9}"
        f"{'max |dloss|':>13}"
    )
    print(header)
    print("-" * len(header))
    tokens = args.batch_size * NET["block_size"]
    medians = {name: statistics.median(seconds) * 1e3 for name, seconds in times.items()}
    for name, seconds in times.items():
        mode = name.partition(" + ")[2]
        reference = medians["plain + " + mode if mode else "plain"]  # the plain loop of the same mode
        # the same loop in float32 (eager or compiled alike): what bf16 saves
        fp32 = medians.get(name.removesuffix(" + bf16")) if name.endswith(" + bf16") else None
        fp32_text = f"{medians[name] / fp32:>8.3f}x" if fp32 else f"{'-':>9}"
        print(
            f"{name:<28}{medians[name]:>9.2f}{min(seconds) * 1e3:>9.2f}{medians[name] / reference:>9.3f}x"
            f"{fp32_text}{tokens / medians[name] * 1e3:>9.0f}{dloss[name]:>13.2e}"
        )
    ratios = [
        f"{mode.removeprefix(' + ') or 'eager'}: lightning / plain = "
        f"{medians['Lightning' + mode] / medians['plain' + mode]:.3f}x"
        for mode in dict.fromkeys(name.removeprefix("plain") for name in times if name.startswith("plain"))
    ]
    print("\n" + "; ".join(ratios) + " step time (1.00x = no overhead)")
    first = next(name for name in times if name.startswith("plain"))
    others = [name for name in times if name.startswith("plain") and name != first]
    if others:
        base = "eager fp32 plain" if first == "plain" else first
        print(
            f"plain loop, step time vs {base}: "
            + ", ".join(f"{n.removeprefix('plain + ')} {medians[n] / medians[first]:.3f}x" for n in others)
        )


if __name__ == "__main__":
    main()
