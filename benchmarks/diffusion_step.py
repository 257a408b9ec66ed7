"""Training throughput of one diffusion step: plain PyTorch vs ``lit_genai`` on Lightning.

What it measures
    Images per second of the DDPM training step (L_simple, eps-prediction, linear schedule with
    T = 1000, label dropout 0.1 for classifier-free guidance, Adam) of the same ``UNet`` on the same
    bundled MNIST batches (``MNIST5k``), in one run, three ways (four with the peer below):

    - ``plain PyTorch``: a hand-written loop (model, Adam, the loss from ``lit_genai.diffusion.losses``
      and ``schedules``; no Lightning): the reference;
    - ``Lightning``: ``lit_genai.diffusion.Diffusion`` driven by ``lightning.Trainer`` (logger off,
      no checkpointing, no progress bar, no validation);
    - ``Lightning + EMA``: the same with the ``lit_genai.callbacks.EMA`` callback (decay from the
      demo config);
    - ``peer (lucidrains)``: lucidrains' ``denoising-diffusion-pytorch`` (its own ``Unet`` and
      ``GaussianDiffusion``, plain Adam loop), when that package is installed; see below.

    One step is timed as the wall-clock interval between the ends of two consecutive steps
    (``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU), so it includes fetching the
    batch and every hook Lightning runs between steps. The first ``--warmup`` steps are discarded;
    the table reports the median over the ``--steps`` timed steps. Both sides use the same initial
    weights and the same random stream, so their losses should agree (to float round-off on a GPU);
    the ``max |dloss|`` column checks that the loops really do the same work. The demo's LR warm-up
    and gradient clipping are left out on both sides.

How to run
    python benchmarks/diffusion_step.py                      # demo UNet, 30 timed steps
    python benchmarks/diffusion_step.py --config tiny --steps 10 --warmup 2 --threads 1
    python benchmarks/diffusion_step.py --device cuda --batch-size 128

    ``--config demo`` reads the UNet of ``experiments/diffusion/mnist.yaml`` (so it stays in sync
    with the demo); ``--config tiny`` is a small UNet for a quick check.

How to read the ratio
    ``lightning / plain = 0.97x`` means Lightning trains at 97% of the plain loop's images/s, i.e.
    about 3% framework overhead per step; 1.00x is no overhead. The overhead is roughly constant per
    step, so it shows most with a tiny network or batch and vanishes as the step gets heavier. The
    variants take turns for ``--rounds`` rounds (default 3), so a machine whose speed drifts
    slows each alike; still, on a shared or busy machine differences of a few percent are noise:
    raise ``--steps`` or ``--rounds`` before trusting a small gap.

Peer implementation (optional)
    ``pip install denoising-diffusion-pytorch`` adds a row for lucidrains' DDPM trainer (it is not a
    dependency of lit_genai; without it the script says the row was skipped and runs as before).
    The peer trains its own ``Unet(dim=base_channels, dim_mults=channel_mult, channels=1)`` wrapped in
    ``GaussianDiffusion(image_size=28, timesteps=1000, objective="pred_noise",
    beta_schedule="linear")`` by a plain loop ``loss = diffusion(images); loss.backward();
    adam.step()``, timed exactly like the plain loop, in the same interleaved rounds. It gets the same
    MNIST batches mapped to [0, 1] (its ``auto_normalize`` maps them back to [-1, 1] itself). 28 x 28
    fits its UNet for up to three resolution levels (it needs sides divisible by
    2^(levels - 1)); a deeper UNet would get the batches zero-padded (background) to the next
    multiple, for the peer only, and the table header says so. Its network is not ours: another
    block layout (two ResNet blocks and linear attention per level, full attention in the middle,
    7 x 7 stem) and no class conditioning (so no label dropout), hence a different parameter count
    (the ``params`` column). Its ratio therefore compares "a training step of each framework's own
    MNIST-sized UNet", not framework overhead on the same network; its losses are not compared
    (``max |dloss|`` shows "-").
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lit_genai.callbacks import EMA
from lit_genai.data import MNIST5k
from lit_genai.diffusion import Diffusion
from lit_genai.diffusion.losses import diffusion_loss, prediction_target
from lit_genai.diffusion.schedules import extract, make_betas, q_sample, schedule_tensors
from lit_genai.nn import UNet

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "diffusion" / "mnist.yaml"
TINY_UNET = dict(
    in_channels=1,
    base_channels=8,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_levels=[],
    dropout=0.0,
    num_groups=4,
    num_classes=10,
)
# The loss settings, passed explicitly to Diffusion and used by the plain loop.
NUM_TIMESTEPS, SCHEDULE, PREDICTION, P_UNCOND = 1000, "linear", "eps", 0.1
SEED = 0
PEER = "peer (lucidrains)"
PEER_PACKAGE = "denoising-diffusion-pytorch"


def load_config(name: str) -> tuple[dict, float, dict]:
    """UNet init args, Adam learning rate and EMA args: from the demo YAML, or the tiny UNet."""
    with open(DEMO_CONFIG) as f:
        cfg = yaml.safe_load(f)
    model_args = cfg["model"]["init_args"]
    lr = float(model_args["optimizer"]["init_args"]["lr"])
    ema_args = dict(cfg.get("ema") or {})
    unet_args = dict(model_args["net"]["init_args"]) if name == "demo" else dict(TINY_UNET)
    return unet_args, lr, ema_args


def make_batches(batch_size: int, n: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` batches (x (B, 1, 28, 28) in [-1, 1], y (B,)) of MNIST5k training digits, seeded order."""
    dm = MNIST5k(batch_size=batch_size)
    dm.setup("fit")
    x, y = dm.train_set.tensors  # (N, 1, 28, 28), (N,)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    idx = order.repeat(batch_size * n // len(x) + 1)[: batch_size * n].view(n, batch_size)
    return [(x[i], y[i]) for i in idx]


def build_net(unet_args: dict) -> UNet:
    torch.manual_seed(SEED)  # same initial weights in every variant
    return UNet(**unet_args)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Per-step seconds of the timed steps: intervals between consecutive step ends."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def run_plain(
    unet_args: dict, lr: float, batches: list, device: torch.device, warmup: int
) -> tuple[list[float], list[float]]:
    """The hand-written loop; returns (timed step seconds, per-step losses)."""
    net = build_net(unet_args).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = {
        k: v.float().to(device) for k, v in schedule_tensors(make_betas(SCHEDULE, NUM_TIMESTEPS)).items()
    }
    alpha_bar, snr = sched["alpha_bar"], sched["snr"]
    num_classes = unet_args.get("num_classes", 0)
    losses, ends = [], []
    torch.manual_seed(SEED + 1)  # the same random stream as the Lightning runs
    for x0, y in batches:
        x0, y = x0.to(device), y.to(device)
        # The same operations, in the same order, as Diffusion.training_step / _loss_terms.
        if num_classes > 0 and P_UNCOND > 0:
            drop = torch.rand(y.shape, device=device) < P_UNCOND
            y = torch.where(drop, torch.full_like(y, num_classes), y)  # null label
        t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), device=device)  # (B,)
        eps = torch.randn(x0.shape, device=device)  # (B, C, H, W)
        x_t = q_sample(x0, t, eps, alpha_bar)
        out = net(x_t, t, y) if num_classes > 0 else net(x_t, t)
        target = prediction_target(PREDICTION, x0, eps, extract(alpha_bar, t, x0.ndim))
        loss = diffusion_loss(out, target, snr_t=snr[t], prediction=PREDICTION)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        sync(device)
        ends.append(time.perf_counter())
    return step_times(ends, warmup), [float(v) for v in losses]


def peer_classes() -> tuple[type, type] | None:
    """lucidrains' ``(Unet, GaussianDiffusion)``, or None when ``denoising-diffusion-pytorch`` is missing."""
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    except ImportError:
        return None
    return Unet, GaussianDiffusion


def peer_image_size(unet_args: dict, side: int = 28) -> int:
    """Side the peer's UNet accepts: ``side`` rounded up to a multiple of its 2^(levels - 1) downsampling."""
    factor = 2 ** (len(unet_args["channel_mult"]) - 1)
    return math.ceil(side / factor) * factor


def build_peer(unet_args: dict, image_size: int) -> nn.Module:
    """The peer's ``GaussianDiffusion`` around its own UNet of the closest size to ours."""
    Unet, GaussianDiffusion = peer_classes()
    torch.manual_seed(SEED)
    unet = Unet(
        dim=unet_args["base_channels"],
        dim_mults=tuple(unet_args["channel_mult"]),
        channels=unet_args.get("in_channels", 1),
        dropout=unet_args.get("dropout", 0.0),
    )
    return GaussianDiffusion(
        unet,
        image_size=image_size,
        timesteps=NUM_TIMESTEPS,
        objective="pred_noise",
        beta_schedule=SCHEDULE,
        auto_normalize=True,  # it takes [0, 1] images and maps them to [-1, 1] itself
    )


def run_peer(
    unet_args: dict, lr: float, batches: list, device: torch.device, warmup: int
) -> tuple[list[float], list[float]]:
    """lucidrains' trainer step in a plain Adam loop; returns (timed step seconds, per-step losses)."""
    size = peer_image_size(unet_args)
    diffusion = build_peer(unet_args, size).to(device).train()
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr)
    pad = size - 28
    # Untimed: [-1, 1] -> [0, 1] (its auto_normalize undoes it), zero (background) padding if needed.
    images = [F.pad((x0 + 1) / 2, (0, pad, 0, pad)) for x0, _ in batches]  # (B, 1, size, size)
    losses, ends = [], []
    torch.manual_seed(SEED + 1)
    for x0 in images:
        x0 = x0.to(device)
        loss = diffusion(x0)  # its own training step: t, noise, q_sample, UNet, weighted MSE
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
        self.threads = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.threads = torch.get_num_threads()
            torch.manual_seed(SEED + 1)  # the same random stream as the plain loop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())
        sync(pl_module.device)
        self.ends.append(time.perf_counter())


def run_lightning(
    unet_args: dict, lr: float, batches: list, device: torch.device, warmup: int, ema_args: dict | None
) -> tuple[list[float], list[float], int]:
    """Diffusion on lightning.Trainer; returns (timed step seconds, per-step losses, torch threads)."""
    model = Diffusion(
        build_net(unet_args),
        sample_shape=(1, 28, 28),
        num_classes=unet_args.get("num_classes", 0),
        num_timesteps=NUM_TIMESTEPS,
        beta_schedule=SCHEDULE,
        prediction=PREDICTION,
        p_uncond=P_UNCOND,
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
    )
    timer = StepTimer()
    callbacks: list[Callback] = [timer] + ([EMA(**ema_args)] if ema_args is not None else [])
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
    return step_times(timer.ends, warmup), [float(v) for v in timer.losses], timer.threads


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5, >= 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--config", choices=["demo", "tiny"], default="demo", help="UNet size")
    parser.add_argument(
        "--rounds", type=int, default=3, help="run the variants in turn this many times (default 3)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--steps, --warmup, --batch-size and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: ..." lines
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on recent torch
    warnings.filterwarnings("ignore", message=".*Tensor Cores.*")  # same matmul precision on both sides

    device = torch.device(args.device)
    unet_args, lr, ema_args = load_config(args.config)
    batches = make_batches(args.batch_size, args.warmup + args.steps)
    n_params = count_params(UNet(**unet_args))
    has_peer = peer_classes() is not None
    if has_peer:
        peer_size = peer_image_size(unet_args)
        peer_params = count_params(build_peer(unet_args, peer_size).model)
    else:
        print(f"{PEER} row skipped: `pip install {PEER_PACKAGE}` to enable it")
    params = {"plain PyTorch": n_params, "Lightning": n_params, "Lightning + EMA": n_params}

    # The variants take turns (plain, Lightning, Lightning + EMA, peer, plain, ...) so that a machine
    # whose speed drifts during the run (shared cores, clock changes) slows each of them alike.
    results: dict[str, tuple[list[float], list[float], int]] = {}
    for _ in range(max(args.rounds, 1)):
        times, losses = run_plain(unet_args, lr, batches, device, args.warmup)
        rounds = {
            "plain PyTorch": (times, losses, torch.get_num_threads()),
            "Lightning": run_lightning(unet_args, lr, batches, device, args.warmup, None),
            "Lightning + EMA": run_lightning(unet_args, lr, batches, device, args.warmup, ema_args),
        }
        if has_peer:
            times, losses = run_peer(unet_args, lr, batches, device, args.warmup)
            rounds[PEER] = (times, losses, torch.get_num_threads())
            params[PEER] = peer_params
        for name, (times, losses, threads) in rounds.items():
            previous = results.get(name, ([], losses, threads))
            results[name] = (previous[0] + times, losses, threads)

    print(
        f"\nDDPM training step, config={args.config} (UNet {n_params / 1e6:.2f}M params), "
        f"batch {args.batch_size}, {args.device}, torch threads {args.threads}, "
        f"median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up each"
    )
    if has_peer and peer_size != 28:
        print(f"({PEER}: batches zero-padded to {peer_size}x{peer_size} for its UNet; others 28x28)")
    header = (
        f"{'variant':<19}{'params':>8}{'ms/step':>9}{'min ms':>9}{'images/s':>10}{'vs plain':>10}"
        f"{'max |dloss|':>13}"
    )
    print(header)
    print("-" * len(header))
    plain_ips, plain_losses = None, results["plain PyTorch"][1]
    ratios = {}
    for name, (times, losses, threads) in results.items():
        if threads != args.threads:
            print(f"  (warning: {name} ran with {threads} torch threads, not {args.threads})")
        median = statistics.median(times)
        ips = args.batch_size / median
        plain_ips = plain_ips or ips
        ratios[name] = ips / plain_ips
        if name == PEER:  # another network and loss stream: nothing to compare
            dloss_text = "-"
        else:
            dloss_text = f"{max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True)):.2e}"
        print(
            f"{name:<19}{params[name] / 1e3:>7.0f}k{median * 1e3:>9.1f}{min(times) * 1e3:>9.1f}"
            f"{ips:>10.1f}{ratios[name]:>9.2f}x{dloss_text:>13}"
        )
    if has_peer:
        print(
            f"  {PEER}: {PEER_PACKAGE}'s own UNet (other blocks, unconditional) in its own"
            " GaussianDiffusion;\n  its ratio compares a training step of each framework's own"
            " MNIST-sized UNet, not overhead on the same network."
        )
    print(
        f"\nlightning / plain = {ratios['Lightning']:.2f}x, "
        f"lightning+ema / plain = {ratios['Lightning + EMA']:.2f}x  (1.00x = no overhead)"
        + (f", peer / plain = {ratios[PEER]:.2f}x" if has_peer else "")
    )


if __name__ == "__main__":
    main()
