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

How to run
    python benchmarks/vae_step.py                                  # batch 100, 200 timed steps
    python benchmarks/vae_step.py --batch-size 20 --threads 1      # the IWAE recipe's batch
"""

from __future__ import annotations

import argparse
import functools
import logging
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


def run_plain(batches: list, device: torch.device, warmup: int) -> tuple[list[float], list[float]]:
    """The hand-written loop; returns (timed step seconds, per-step losses)."""
    encoder, decoder = (net.to(device).train() for net in build_nets())
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR, eps=EPS)
    losses, ends = [], []
    torch.manual_seed(SEED + 1)  # the same random stream as the Lightning runs
    for x, _ in batches:
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

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            torch.manual_seed(SEED + 1)  # the same random stream as the plain loop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())
        sync(pl_module.device)
        self.ends.append(time.perf_counter())


def run_lightning(
    batches: list, device: torch.device, warmup: int, ema: bool
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
    timer = StepTimer()
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
    results: dict[str, tuple[list[float], list[float]]] = {}
    for _ in range(args.rounds):
        rounds = {
            "plain PyTorch": run_plain(batches, device, args.warmup),
            "Lightning": run_lightning(batches, device, args.warmup, ema=False),
            "Lightning + EMA": run_lightning(batches, device, args.warmup, ema=True),
        }
        for name, (times, losses) in rounds.items():
            results[name] = (results.get(name, ([], losses))[0] + times, losses)

    print(
        f"\nVAE training step (MLP 784-200-200-50, {n_params / 1e3:.0f}k params, Bernoulli, dynamic "
        f"binarisation), batch {args.batch_size}, {args.device}, torch threads {args.threads}, "
        f"median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up each"
    )
    header = f"{'variant':<17}{'ms/step':>9}{'min ms':>9}{'vs plain':>10}{'max |dloss|':>13}"
    print(header)
    print("-" * len(header))
    plain_ms, plain_losses = statistics.median(results["plain PyTorch"][0]) * 1e3, results["plain PyTorch"][1]
    ratios = {}
    for name, (times, losses) in results.items():
        median = statistics.median(times) * 1e3
        ratios[name] = median / plain_ms
        dloss = max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True))
        print(f"{name:<17}{median:>9.2f}{min(times) * 1e3:>9.2f}{ratios[name]:>9.3f}x{dloss:>13.2e}")
    print(
        f"\nlightning / plain = {ratios['Lightning']:.3f}x, lightning+ema / plain = "
        f"{ratios['Lightning + EMA']:.3f}x step time (1.00x = no overhead)"
    )


if __name__ == "__main__":
    main()
