"""Generation speed of a WaveNet: fast generation through the rolling queues versus recomputation.

What it measures
    Samples per second of ``lit_genai.ar.sampling.generate`` for two WaveNets (random weights: the
    speed does not depend on them), batch ``--batch``, with

    - ``use_cache=True``: the fast generation algorithm (Paine et al. 2016): one sample per step
      through the per-layer queues of ``WaveNetCache``, O(layers) work per sample; ``--samples``
      samples from a one-sample prompt, best of ``--repeats`` runs after a warm-up;
    - ``use_cache=False``: every step recomputes the net over the last ``block_size`` samples (the
      receptive field). A long run would take minutes, so its time is extrapolated: one step at the
      full context (forward pass + draw, the cost of every step once the sequence is longer than the
      receptive field) is timed, best of ``--naive-steps``, and the rate is batch / step time; the
      table says ``(steady-state step)``.

    The real-time factor is seconds of audio generated per second of compute, at 16 kHz and 8 kHz:
    samples/s / sample rate (above 1: faster than real time).

    Exactness (the ``same`` column): from the same prompt of receptive field + 5 random samples (so
    the recomputation crops a window and the cache's queues are filled from a prompt longer than
    they are) and the same generator seed, both paths must draw the same ``--check-steps`` samples.

Configurations
    speech: 3 stacks x 10 layers (dilations 1 .. 512), kernel 3, residual 128, gate 256, skip 128,
        256 mu-law levels: receptive field 6139 (0.38 s at 16 kHz).
    notes: the ``WaveNet`` defaults, 3 stacks x 10 layers, kernel 2, residual 32, gate 64, skip 128:
        receptive field 3070 (0.38 s at 8 kHz).

How to run
    OMP_NUM_THREADS=1 python benchmarks/wavenet_generation.py
    OMP_NUM_THREADS=1 python benchmarks/wavenet_generation.py --configs notes --batch 8 --samples 2000
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_genai.ar.sampling import filter_logits, generate, sample_next
from lit_genai.nn.wavenet import WaveNet

CONFIGS = {
    "speech": dict(residual_channels=128, gate_channels=256, skip_channels=128, kernel_size=3),
    "notes": dict(),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def naive_step_seconds(net: WaveNet, batch: int, steps: int, device: torch.device) -> float:
    """Seconds of one recomputing step at the full context: a pass over block_size samples + a draw."""
    seq = torch.randint(0, net.levels, (batch, net.block_size), device=device)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.no_grad():
            sample_next(filter_logits(net(seq)[:, -1]), generator)

    return seconds(step, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=400, help="samples of the timed fast run")
    parser.add_argument("--repeats", type=int, default=1, help="timed fast runs (best)")
    parser.add_argument("--naive-steps", type=int, default=3, help="timed recomputing steps (best)")
    parser.add_argument("--check-steps", type=int, default=8, help="samples drawn by both paths to compare")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    header = (
        f"{'config':>7} {'field':>6} {'params':>7} {'fast samples/s':>15} {'naive samples/s':>16} "
        f"{'speed-up':>9} {'RTF 16k':>8} {'RTF 8k':>7}  same"
    )
    print(header)
    print("-" * len(header))
    for name in args.configs:
        torch.manual_seed(0)
        net = WaveNet(**CONFIGS[name]).to(device).eval()
        B, N = args.batch, args.samples
        prompt = torch.zeros(B, 1, dtype=torch.long, device=device)

        def fast(net=net, prompt=prompt, N=N) -> None:
            generate(net, prompt, N, use_cache=True, generator=torch.Generator().manual_seed(0))

        fast_rate = B * N / seconds(fast, args.repeats, device)
        naive_rate = B / naive_step_seconds(net, B, args.naive_steps, device)
        g = torch.Generator().manual_seed(1)
        check = torch.randint(0, net.levels, (B, net.receptive_field + 5), generator=g).to(device)
        a, b = (
            generate(net, check, args.check_steps, use_cache=c, generator=torch.Generator().manual_seed(2))
            for c in (True, False)
        )
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(
            f"{name:>7} {net.receptive_field:>6} {params:>6.2f}M {fast_rate:>15.1f} {naive_rate:>16.2f} "
            f"{fast_rate / naive_rate:>8.0f}x {fast_rate / 16000:>8.4f} {fast_rate / 8000:>7.4f}  "
            f"{'yes' if torch.equal(a, b) else 'NO'} (naive: steady-state step)"
        )


if __name__ == "__main__":
    main()
