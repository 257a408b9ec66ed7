"""Sampling speed of a GatedPixelCNN: the exact incremental sampler versus one forward pass per token.

What it measures
    Samples per second of ``lit_genai.ar.sampling.generate_in_place`` for 28x28 binarised-MNIST
    nets (``GatedPixelCNN``, 1 channel, 2 levels, 7 gated layers after the first, hidden 32 and 64,
    ``--output-hidden`` head maps), batch ``--batch``, with

    - ``fast=True``: ``GatedPixelCNN.sample_in_place`` (one row of the vertical stack per row, one
      column of the horizontal stack and the head per token);
    - ``fast=False``: the generic loop, one forward pass over the rows up to the current one per
      token (784 passes per image).

    The naive loop takes minutes per batch, so by default its time is extrapolated: the time of one
    of its steps (forward pass + draw) is measured over r = 1, H/4, H/2, 3H/4, H rows (best of
    ``--repeats``), interpolated linearly in r, and summed over the W * C steps of every row; the
    table says ``(extrapolated)``. ``--naive-full`` times the real loop instead. The weights are
    random (the speed does not depend on them).

    Exactness (the ``same`` column): from the same prompt (the first H - ``--check-rows`` rows of a
    fast sample) and the same generator seed, both paths must draw the same tokens for the last
    rows (the naive path runs for real there).

How to run
    OMP_NUM_THREADS=1 python benchmarks/pixelcnn_sampling.py
    OMP_NUM_THREADS=1 python benchmarks/pixelcnn_sampling.py --batch 100 --naive-full
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lit_genai.ar.sampling import filter_logits, generate_in_place, sample_next
from lit_genai.nn.pixelcnn import GatedPixelCNN

SHAPE = (1, 28, 28)  # binarised MNIST


def seconds(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def naive_extrapolated(net: GatedPixelCNN, batch: int, repeats: int) -> float:
    """Seconds of the naive loop over a whole batch, from the timed steps at a few row counts."""
    C, H, W = net.image_shape
    seq = torch.zeros(batch, net.block_size, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)

    def step(rows: int) -> None:  # one token of the naive loop at row rows - 1
        with torch.no_grad():
            logits = net(seq[:, : rows * W * C])[:, rows * W * C - 1]
            sample_next(filter_logits(logits), generator)

    rows = sorted({1, H // 4, H // 2, 3 * H // 4, H} - {0})
    step_s = [seconds(lambda r=r: step(r), repeats) for r in rows]
    per_row = np.interp(np.arange(1, H + 1), rows, step_s)  # (H,) seconds of one step at row i
    return float(per_row.sum() * W * C)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--n-layers", type=int, default=7)
    parser.add_argument("--output-hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of the fast sampler (best)")
    parser.add_argument("--naive-full", action="store_true", help="time the real naive loop")
    parser.add_argument("--check-rows", type=int, default=2, help="rows drawn by both paths to compare")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    C, H, W = SHAPE
    print(
        f"GatedPixelCNN {C}x{H}x{W}, 2 levels, n_layers={args.n_layers}, batch {args.batch}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    header = f"{'hidden':>6} {'fast s':>8} {'naive s':>9} {'fast samples/s':>15} {'naive samples/s':>16} "
    print(header + f"{'ratio':>7}  same")
    for hidden in args.hidden:
        torch.manual_seed(0)
        net = GatedPixelCNN(
            SHAPE, 2, hidden=hidden, n_layers=args.n_layers, output_hidden=args.output_hidden
        ).eval()
        N, B = net.block_size, args.batch

        def run(fast: bool, prompt=None, seed: int = 0, net=net, B=B, N=N) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed)
            return generate_in_place(net, B, N, prompt=prompt, generator=g, fast=fast)

        fast_s = seconds(lambda: run(True), args.repeats)
        if args.naive_full:
            start = time.perf_counter()
            run(False)
            naive_s, how = time.perf_counter() - start, ""
        else:
            naive_s, how = naive_extrapolated(net, B, max(args.repeats, 3)), " (extrapolated)"
        prompt = run(True)[:, : (H - args.check_rows) * W * C]
        same = torch.equal(run(True, prompt, seed=1), run(False, prompt, seed=1))
        print(
            f"{hidden:>6} {fast_s:>8.2f} {naive_s:>9.1f} {B / fast_s:>15.2f} {B / naive_s:>16.3f} "
            f"{naive_s / fast_s:>6.0f}x  {same}{how}"
        )


if __name__ == "__main__":
    main()
