"""Our diffusion UNet and sampler beside diffusers' (``UNet2DModel``, ``DPMSolverMultistepScheduler``).

What it measures
    Two things, in one run, each side by side on the same inputs:

    a. Training step. ``lit_genai.nn.UNet`` of the demo (``experiments/diffusion/mnist.yaml``: 16
       base channels, levels x1 x2 x4, one residual block per level, attention at the lowest level,
       10 classes) against diffusers' ``UNet2DModel`` built by ``lit_genai.export.diffusers.unet_config``
       from it: the same architecture (DDPM's, which diffusers ported), so the parameter counts are
       equal (both printed), and it starts from our initial weights (``unet_state_dict``). Both are
       class-conditional (diffusers' ``num_class_embeds``, one more row for the null label) and get the
       same labels, with the same 10 % label dropout to the null label. Batches are random
       MNIST-shaped tensors, 64 x 1 x 28 x 28 in [-1, 1], NOT padded: both UNets downsample twice
       (28 -> 14 -> 7), which 28 allows. The loss is DDPM's L_simple (eps-prediction, linear betas,
       T = 1000, the same t and noise for both), the optimiser Adam at the demo's learning rate; plain
       loops (no Lightning: this compares the networks). The two step in turn on the same batch
       (paired; which goes first alternates), so a machine whose speed drifts slows both alike. A
       step is timed with ``time.perf_counter`` around forward, backward and ``Adam.step`` (after
       ``torch.cuda.synchronize`` on a GPU). ``max |dloss|`` compares the two losses step by step:
       it is float round-off if the two networks compute the same function.

    b. Sampling throughput, DPM-Solver++(2M), 20 steps, for 64 images of fixed labels (0..9 in
       turn), from the same weights (the UNet of part a after its training steps, wrapped in a
       ``Diffusion`` with eps-prediction, linear betas, T = 1000):

       - ``ours``: ``Diffusion.sample(sampler="dpm_solver++", steps=20, sigma_max=None,
         clip_denoised=False, guidance_scale=0)``: the Karras grid (rho = 7) from sigma of step
         T - 1 down to sigma of step 0, then 0, in float64; the net at the rounded timestep;
       - ``diffusers loop, our UNet``: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
         solver_order=2, solver_type="midpoint", use_karras_sigmas=True, final_sigmas_type="zero",
         lower_order_final=True, prediction_type="epsilon", trained_betas=<our betas>)`` and the
         plain loop ``for t in scheduler.timesteps: x = scheduler.step(net(x, t), t, x).prev_sample``
         calling OUR UNet: the same grid (``use_karras_sigmas`` builds it from the same two ends,
         so ``timestep_spacing`` plays no part), the same rounded timesteps, first order on the first
         step and on the final step to sigma = 0;
       - ``diffusers loop + UNet2DModel``: the same loop calling the ``UNet2DModel`` exported from
         the same weights (``lit_genai.export.diffusers``): diffusers end to end.

       All start from the same standard-normal noise: ours scales it by sigma_max (x = x0 + sigma
       noise), diffusers by ``init_noise_sigma`` = 1 in its x_t = sqrt(alpha_bar) (x0 + sigma noise)
       form, which differ by the factor sqrt(1 + 1 / sigma_max^2) (1 + 2e-5 here); the last line
       also reports the diffusers loop started at exactly our x_T (one untimed run). Final images are
       clamped to [-1, 1] on every row (as ``Diffusion.sample`` returns them). Images/s is 64 over the
       median of ``--rounds`` runs per variant, the variants taking turns within each round;
       ``max |dx|`` is the largest difference of a final pixel from ``ours`` (range 2).

How to run
    OMP_NUM_THREADS=1 python benchmarks/peer_diffusion.py                  # CPU, one thread
    OMP_NUM_THREADS=1 python benchmarks/peer_diffusion.py --steps 10 --rounds 2 --sample-rounds 2
    python benchmarks/peer_diffusion.py --device cuda --threads 8

How to read the ratios
    ``diffusers / ours`` of the training step is a step-time ratio: 1.10x means diffusers' network
    takes 10 % longer per step for the same computation. Of sampling it is an images/s ratio: 0.90x
    means diffusers draws 90 % as many images per second. With the same weights and grid, a
    difference in ``diffusers loop, our UNet`` is the sampler loop's own cost; the last row adds
    the network's.
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
from torch import Tensor, nn
from torch.nn import functional as F

from lit_genai.diffusion import Diffusion
from lit_genai.diffusion.schedules import make_betas, q_sample, schedule_tensors
from lit_genai.export.diffusers import unet_config, unet_state_dict
from lit_genai.nn import UNet

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "diffusion" / "mnist.yaml"
NUM_TIMESTEPS, SCHEDULE, P_UNCOND = 1000, "linear", 0.1
SHAPE = (1, 28, 28)
SEED = 0


def demo_unet() -> tuple[dict, float]:
    """The demo's UNet init args and Adam learning rate, read from its YAML."""
    with open(DEMO_CONFIG) as f:
        model_args = yaml.safe_load(f)["model"]["init_args"]
    return dict(model_args["net"]["init_args"]), float(model_args["optimizer"]["init_args"]["lr"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_pair(unet_args: dict, device: torch.device) -> tuple[UNet, nn.Module]:
    """Our UNet (seeded) and diffusers' UNet2DModel of the same architecture with the same weights."""
    from diffusers import UNet2DModel

    torch.manual_seed(SEED)
    ours = UNet(**unet_args)
    config, rename = unet_config(ours, SHAPE)
    theirs = UNet2DModel(**config)
    theirs.load_state_dict(unet_state_dict(ours, rename), strict=True)
    return ours.to(device).train(), theirs.to(device).train()


def make_steps(n: int, batch_size: int, num_classes: int, device: torch.device) -> list[tuple[Tensor, ...]]:
    """``n`` steps' inputs (x0 (B, 1, 28, 28) in [-1, 1], labels (B,) after dropout, t (B,), eps)."""
    g = torch.Generator().manual_seed(SEED + 1)
    steps = []
    for _ in range(n):
        x0 = torch.rand((batch_size, *SHAPE), generator=g) * 2 - 1
        y = torch.randint(0, num_classes, (batch_size,), generator=g)
        y = torch.where(torch.rand(batch_size, generator=g) < P_UNCOND, num_classes, y)  # null label
        t = torch.randint(0, NUM_TIMESTEPS, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        steps.append(tuple(v.to(device) for v in (x0, y, t, eps)))
    return steps


def train_step(forward, opt: torch.optim.Optimizer, alpha_bar: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
    """One DDPM L_simple step: x_t = q_sample(x0, t, eps); loss = |eps - net(x_t, t, y)|^2."""
    x0, y, t, eps = inputs
    x_t = q_sample(x0, t, eps, alpha_bar)  # (B, 1, 28, 28)
    loss = F.mse_loss(forward(x_t, t, y), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def run_training(
    unet_args: dict, lr: float, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, list[float]], float, UNet, nn.Module]:
    """Paired training rounds; returns (step seconds per side, max |dloss|, the last round's nets)."""
    alpha_bar = schedule_tensors(make_betas(SCHEDULE, NUM_TIMESTEPS))["alpha_bar"].float().to(device)
    steps = make_steps(args.warmup + args.steps, args.batch_size, unet_args["num_classes"], device)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    dloss = 0.0
    for _ in range(args.rounds):
        ours, theirs = build_pair(unet_args, device)
        sides = {
            "ours": (ours, torch.optim.Adam(ours.parameters(), lr=lr)),
            "diffusers": (
                lambda x, t, y, net=theirs: net(x, t, class_labels=y).sample,
                torch.optim.Adam(theirs.parameters(), lr=lr),
            ),
        }
        for i, inputs in enumerate(steps):
            order = ["ours", "diffusers"] if i % 2 == 0 else ["diffusers", "ours"]
            losses = {}
            for name in order:
                forward, opt = sides[name]
                sync(device)
                start = time.perf_counter()
                losses[name] = train_step(forward, opt, alpha_bar, inputs)
                sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
            dloss = max(dloss, abs(float(losses["ours"]) - float(losses["diffusers"])))
    return times, dloss, ours, theirs


def diffusers_scheduler(module: Diffusion):
    """DPM-Solver++(2M) of diffusers on our schedule, set up to walk our sampler's grid."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=module.num_timesteps,
        trained_betas=module.betas.detach().cpu().tolist(),
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        use_karras_sigmas=True,  # Karras grid (rho 7) from sigma(T - 1) to sigma(0): ours with sigma_max=None
        final_sigmas_type="zero",  # the last step goes to sigma = 0 (first order): as ours
        lower_order_final=True,
        thresholding=False,  # ours: clip_denoised=False
    )


@torch.no_grad()
def diffusers_loop(scheduler, forward, noise: Tensor, steps: int) -> Tensor:
    """diffusers' sampling loop (as its pipelines run it) around ``forward(x_t, t (B,)) -> eps``."""
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma  # (B, C, H, W)
    for t in scheduler.timesteps:
        eps = forward(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1.0, 1.0)


def run_sampling(
    ours: UNet, theirs: nn.Module, lr: float, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float], dict]:
    """Interleaved sampling runs; returns (seconds per variant, max |dx| vs ours, grid info)."""
    module = Diffusion(
        ours,
        sample_shape=SHAPE,
        num_classes=ours.num_classes,
        num_timesteps=NUM_TIMESTEPS,
        beta_schedule=SCHEDULE,
        prediction="eps",
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
    ).to(device)
    module.eval()
    theirs.eval()
    n = args.num_samples
    labels = (torch.arange(n) % ours.num_classes).to(device)
    noise = torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(SEED + 2)).to(device)
    scheduler = diffusers_scheduler(module)

    def run_ours() -> Tensor:
        # Diffusion.sample draws its noise as torch.randn(shape, generator): the same noise as above
        return module.sample(
            n,
            cond={"label": labels},
            generator=torch.Generator().manual_seed(SEED + 2),
            sampler="dpm_solver++",
            steps=args.sample_steps,
            sigma_max=None,  # the grid's top is sigma(T - 1), as diffusers' Karras grid
            clip_denoised=False,
            guidance_scale=0.0,  # the labels' conditional output, one pass per step
        )

    variants = {
        "ours": run_ours,
        "diffusers loop, our UNet": lambda: diffusers_loop(
            scheduler, lambda x, t: ours(x, t, labels), noise, args.sample_steps
        ),
        "diffusers loop + UNet2DModel": lambda: diffusers_loop(
            scheduler, lambda x, t: theirs(x, t, class_labels=labels).sample, noise, args.sample_steps
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    images: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, run in variants.items():  # untimed warm-up, and the images compared
            images[name] = run()
        for _ in range(args.sample_rounds):
            for name, run in variants.items():
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times[name].append(time.perf_counter() - start)
    diff = {name: float((x - images["ours"]).abs().max()) for name, x in images.items()}
    ours_grid = module.sigma_grid(args.sample_steps, sigma_max=None)
    # diffusers' loop started exactly at our x_T (in its x_t form): what is left is float round-off
    top = float(ours_grid[0])
    with torch.no_grad():
        matched = diffusers_loop(
            scheduler, lambda x, t: ours(x, t, labels), noise * top / math.sqrt(1 + top**2), args.sample_steps
        )
    diff["matched start"] = float((matched - images["ours"]).abs().max())
    scheduler.set_timesteps(args.sample_steps)
    info = dict(
        ours_grid=ours_grid,
        theirs_grid=scheduler.sigmas.double(),
        theirs_t=scheduler.timesteps.tolist(),
        std=float(images["ours"].std()),
    )
    return times, diff, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per round (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds, fresh nets each (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step (default 64)")
    parser.add_argument("--num-samples", type=int, default=64, help="images per sampling run (default 64)")
    parser.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++ steps (default 20)")
    parser.add_argument("--sample-rounds", type=int, default=3, help="timed sampling runs per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.rounds, args.batch_size, args.num_samples) < 1:
        parser.error("--steps, --warmup, --rounds, --batch-size and --num-samples must be >= 1")
    if min(args.sample_steps, args.sample_rounds, args.threads) < 1:
        parser.error("--sample-steps, --sample-rounds and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    try:
        import diffusers
    except ImportError:
        parser.error("this benchmark needs the diffusers package: pip install 'lit_genai[interop]'")
    torch.set_num_threads(args.threads)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(args.device)
    unet_args, lr = demo_unet()

    times, dloss, ours, theirs = run_training(unet_args, lr, args, device)
    n_ours, n_theirs = count_params(ours), count_params(theirs)
    print(
        f"\nDDPM training step (eps, linear betas, T={NUM_TIMESTEPS}, Adam lr {lr:g}), demo UNet, "
        f"class-conditional both, batch {args.batch_size} x 1 x 28 x 28 (no padding), {args.device}, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, {args.threads} thread(s), "
        f"median of {args.rounds} x {args.steps} paired steps after {args.warmup} warm-up"
    )
    header = f"{'network':<24}{'params':>9}{'ms/step':>9}{'min ms':>9}{'images/s':>10}{'vs ours':>9}"
    print(header)
    print("-" * len(header))
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    rows = [("ours (lit_genai UNet)", "ours", n_ours), ("diffusers UNet2DModel", "diffusers", n_theirs)]
    for label, name, n in rows:
        print(
            f"{label:<24}{n:>9,}{medians[name] * 1e3:>9.1f}{min(times[name]) * 1e3:>9.1f}"
            f"{args.batch_size / medians[name]:>10.1f}{medians[name] / medians['ours']:>8.2f}x"
        )
    print(
        f"diffusers / ours = {medians['diffusers'] / medians['ours']:.2f}x step time; "
        f"max |dloss| over {args.rounds * (args.warmup + args.steps)} paired steps = {dloss:.1e}"
    )

    sample_times, diff, info = run_sampling(ours, theirs, lr, args, device)
    n = args.num_samples
    grid_diff = float((info["ours_grid"] - info["theirs_grid"]).abs().max() / info["ours_grid"][0])
    print(
        f"\nDPM-Solver++(2M), {args.sample_steps} steps, {n} images 1 x 28 x 28, the UNet above after "
        f"its {args.warmup + args.steps} training steps, median of {args.sample_rounds} runs "
        f"(interleaved) after one warm-up; the same starting noise"
    )
    print(
        f"grid: Karras rho 7, sigma {float(info['ours_grid'][0]):.2f} -> "
        f"{float(info['ours_grid'][-2]):.4f} -> 0 on both (max relative grid difference "
        f"{grid_diff:.1e}); diffusers' timesteps {info['theirs_t'][:3]} ... {info['theirs_t'][-3:]}"
    )
    header = f"{'sampler':<30}{'s/run':>8}{'images/s':>10}{'vs ours':>9}{'max |dx|':>11}"
    print(header)
    print("-" * len(header))
    ips = {name: n / statistics.median(seconds) for name, seconds in sample_times.items()}
    for name in sample_times:
        print(
            f"{name:<30}{statistics.median(sample_times[name]):>8.2f}{ips[name]:>10.1f}"
            f"{ips[name] / ips['ours']:>8.2f}x{diff[name]:>11.1e}"
        )
    print(
        f"(pixel range [-1, 1]; std of our final images {info['std']:.3f}); diffusers loop, our UNet, "
        f"started at our x_T (noise x sigma_max / sqrt(1 + sigma_max^2), not noise x 1): "
        f"max |dx| = {diff['matched start']:.1e}"
    )


if __name__ == "__main__":
    main()
