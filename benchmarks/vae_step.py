"""Training throughput of one VAE step: plain PyTorch vs ``lit_genai`` on Lightning.

What it measures
    Milliseconds per training step of the VAE of ``experiments/vae/mnist.yaml`` (784-200-200-50
    ReLU MLP encoder and decoder, Bernoulli decoder on dynamically binarised digits, one z sample,
    the ELBO with the analytic KL, Adam 1e-3) on the same bundled MNIST batches (``MNIST5k``), in
    one run, side by side:

    - ``plain PyTorch``: a hand-written loop (the same ``MLPEncoder`` / ``MLPDecoder``, Adam, the
      loss from ``lit_genai.vae.losses`` and ``lit_genai.data.binarize``; no Lightning): the
      reference;
    - ``Lightning``: ``lit_genai.vae.VAE`` driven by ``lightning.Trainer`` (logger off, no
      checkpointing, no progress bar, no validation), logging its four ``train/*`` values;
    - ``Lightning + EMA``: the same with the ``lit_genai.callbacks.EMA`` callback (decay 0.999),
      which averages the whole module after every step.

    One step is timed as the wall-clock interval between the ends of two consecutive steps
    (``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU), so it includes fetching the
    batch and every hook Lightning runs between steps. The first ``--warmup`` steps are discarded;
    the table reports the median over the timed steps of all ``--rounds`` (the variants take turns,
    so a machine whose speed drifts slows each alike). Both sides start from the same weights and
    draw the same random stream (binarisation noise, then z noise), so their losses agree to float
    round-off: the ``max |dloss|`` column checks that the loops do the same work.

    ``--nvml-check on`` / ``off`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK`` (``lightning.fabric`` sets it
    to 1 at import; ``import lit_genai`` drops it again where NVML cannot load) for every variant;
    ``both`` switches it on for the even steps and off for the odd ones of every variant (step by
    step, so drift slows both alike) and prints each half as its own row and the difference. On a
    CUDA build of torch without an NVIDIA driver, each Adam step then pays a failed NVML load in
    ``torch.cuda.is_available()``, in the plain loop as much as in Lightning's (one process).

How to run
    python benchmarks/vae_step.py                                  # batch 100, 200 timed steps
    python benchmarks/vae_step.py --batch-size 20 --threads 1      # the IWAE recipe's batch
    python benchmarks/vae_step.py --nvml-check both                # Lightning's NVML check on / off
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import time
import warnings

import torch
from lightning.pytorch import Callback, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from lit_genai.callbacks import EMA
from lit_genai.data import MNIST5k
from lit_genai.data.binarize import binarize
from lit_genai.nn.vae import MLPDecoder, MLPEncoder
from lit_genai.vae import VAE
from lit_genai.vae.losses import bernoulli_log_likelihood, gaussian_kl

NET = dict(hidden=[200, 200], latent_dim=50, activation="relu")  # experiments/vae/mnist.yaml
LR, EPS = 1e-3, 1e-4
SEED = 0
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def make_batches(batch_size: int, n: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` batches (x (B, 1, 28, 28) in [-1, 1], y (B,)) of MNIST5k training digits, seeded order."""
    dm = MNIST5k(batch_size=batch_size)
    dm.setup("fit")
    x, y = dm.train_set.tensors  # (N, 1, 28, 28), (N,)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    idx = order.repeat(batch_size * n // len(x) + 1)[: batch_size * n].view(n, batch_size)
    return [(x[i], y[i]) for i in idx]


def build_nets() -> tuple[MLPEncoder, MLPDecoder]:
    torch.manual_seed(SEED)  # same initial weights in every variant
    return MLPEncoder(**NET), MLPDecoder(**NET)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Per-step seconds of the timed steps: intervals between consecutive step ends."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def nvml_check(on: bool) -> None:
    """Lightning's NVML-based CUDA check on (its import's setting) or off (torch's default)."""
    if on:
        os.environ[NVML_CHECK] = "1"
    else:
        os.environ.pop(NVML_CHECK, None)


def run_plain(
    batches: list, device: torch.device, warmup: int, alternate: bool = False
) -> tuple[list[float], list[float]]:
    """The hand-written loop; returns (timed step seconds, per-step losses). ``alternate``: the NVML
    check on for even steps, off for odd ones."""
    encoder, decoder = (net.to(device).train() for net in build_nets())
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR, eps=EPS)
    losses, ends = [], []
    torch.manual_seed(SEED + 1)  # the same random stream as the Lightning runs
    for i, (x, _) in enumerate(batches):
        if alternate:
            nvml_check(i % 2 == 0)
        x = x.to(device)
        # The same operations, in the same order, as VAE.training_step.
        x = binarize(x, "dynamic", uniform=torch.rand(x.shape, device=device))  # (B, 1, 28, 28)
        eps = torch.randn((x.shape[0], 1, NET["latent_dim"]), device=device).transpose(0, 1)  # (1, B, D)
        mean, logvar = encoder(x)
        z = mean + torch.exp(0.5 * logvar) * eps  # (1, B, D)
        logits = decoder(z.flatten(0, 1))  # (B, 1, 28, 28)
        rec = -bernoulli_log_likelihood(logits, (x + 1) / 2)  # (B,)
        loss = rec.mean() + gaussian_kl(mean, logvar).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        sync(device)
        ends.append(time.perf_counter())
    return step_times(ends, warmup), [float(v) for v in losses]


class StepTimer(Callback):
    """Records the end time and loss of every training step; seeds the random stream before step 0."""

    def __init__(self, alternate: bool = False) -> None:
        self.alternate = alternate
        self.ends: list[float] = []
        self.losses: list[Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            torch.manual_seed(SEED + 1)  # the same random stream as the plain loop
        if self.alternate:
            nvml_check(batch_idx % 2 == 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())
        sync(pl_module.device)
        self.ends.append(time.perf_counter())


def run_lightning(
    batches: list, device: torch.device, warmup: int, ema: bool, alternate: bool = False
) -> tuple[list[float], list[float]]:
    """VAE on lightning.Trainer; returns (timed step seconds, per-step losses)."""
    encoder, decoder = build_nets()
    model = VAE(
        encoder,
        decoder,
        likelihood="bernoulli",
        binarization="dynamic",
        optimizer=functools.partial(torch.optim.Adam, lr=LR, eps=EPS),
    )
    timer = StepTimer(alternate)
    callbacks: list[Callback] = [timer] + ([EMA(decay=0.999)] if ema else [])
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    # batch_size=None: the DataLoader hands over the prepared batches unchanged.
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return step_times(timer.ends, warmup), [float(v) for v in timer.losses]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20, >= 1)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per step (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="run the variants in turn this many times")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--nvml-check",
        choices=["as-imported", "on", "off", "both"],
        default="as-imported",
        help=f"{NVML_CHECK}: 1 (on), unset (off), each in turn (both), or as the imports left it",
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

    device = torch.device(args.device)
    batches = make_batches(args.batch_size, args.warmup + args.steps)
    n_params = sum(p.numel() for net in build_nets() for p in net.parameters())
    alternate = args.nvml_check == "both"
    if args.nvml_check in ("on", "off"):
        nvml_check(args.nvml_check == "on")
    variants = ["plain PyTorch", "Lightning", "Lightning + EMA"]
    results: dict[str, tuple[list[float], list[float]]] = {}
    for _ in range(args.rounds):
        rounds = {
            "plain PyTorch": run_plain(batches, device, args.warmup, alternate),
            "Lightning": run_lightning(batches, device, args.warmup, ema=False, alternate=alternate),
            "Lightning + EMA": run_lightning(batches, device, args.warmup, ema=True, alternate=alternate),
        }
        for name, (times, losses) in rounds.items():
            if alternate:  # timed step k is step warmup + k: even steps ran with the check on
                on = [t for k, t in enumerate(times) if (args.warmup + k) % 2 == 0]
                off = [t for k, t in enumerate(times) if (args.warmup + k) % 2 == 1]
                for key, part in ((f"{name} [nvml on]", on), (f"{name} [nvml off]", off)):
                    results[key] = (results.get(key, ([], losses))[0] + part, losses)
            else:
                results[name] = (results.get(name, ([], losses))[0] + times, losses)
    settings = ["on", "off"] if alternate else [None]

    print(
        f"\nVAE training step (MLP 784-200-200-50, {n_params / 1e3:.0f}k params, Bernoulli, dynamic "
        f"binarisation), batch {args.batch_size}, {args.device}, torch threads {args.threads}, "
        f"median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up each"
    )
    nvml = os.environ.get(NVML_CHECK) if args.nvml_check == "as-imported" else args.nvml_check
    print(f"{NVML_CHECK}: {nvml}, torch {torch.__version__}")
    width = max(map(len, results)) + 2
    header = f"{'variant':<{width}}{'ms/step':>9}{'min ms':>9}{'vs plain':>10}{'max |dloss|':>13}"
    print(header)
    print("-" * len(header))
    medians = {name: statistics.median(times) * 1e3 for name, (times, _) in results.items()}
    ratios = {}
    for setting in settings:
        suffix = "" if setting is None else f" [nvml {setting}]"
        plain_ms, plain_losses = medians[f"plain PyTorch{suffix}"], results[f"plain PyTorch{suffix}"][1]
        for variant in variants:
            name = variant + suffix
            times, losses = results[name]
            ratios[name] = medians[name] / plain_ms
            dloss = max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True))
            ms, min_ms = medians[name], min(times) * 1e3
            print(f"{name:<{width}}{ms:>9.2f}{min_ms:>9.2f}{ratios[name]:>9.3f}x{dloss:>13.2e}")
    print()
    for setting in settings:
        suffix = "" if setting is None else f" [nvml {setting}]"
        print(
            f"lightning / plain{suffix} = {ratios['Lightning' + suffix]:.3f}x, lightning+ema / plain"
            f"{suffix} = {ratios['Lightning + EMA' + suffix]:.3f}x step time (1.00x = no overhead)"
        )
    if args.nvml_check == "both":
        for variant in variants:
            delta = medians[f"{variant} [nvml on]"] - medians[f"{variant} [nvml off]"]
            print(f"{variant}: NVML check on - off = {delta * 1e3:+.0f} us/step")


if __name__ == "__main__":
    main()
