"""Generation speed of ``lit_genai.ar.sampling.generate``: key/value cache versus full recomputation.

What it measures
    Tokens per second of sampling ``N`` new tokens (256 and 1024) from a one-token prompt, batch 1,
    with ``use_cache=True`` (the prompt once, then one token per step through the ``KVCache``) and
    ``use_cache=False`` (every step recomputes the whole context, at most ``block_size`` tokens,
    nanoGPT's ``generate``), in one run, side by side, for the shakespeare_char CPU network (GPT of
    4 layers, 4 heads, 128 wide, 65 symbols) with two context lengths:

    - ``block_size=64`` (the training configuration): past 64 tokens the cache cannot hold the
      context and ``generate`` falls back to recomputing the last 64 tokens, so the cache only
      helps the first 63 steps and long generations run at the recomputation speed;
    - ``block_size=1024``: the context holds all the generated tokens, so the cache serves every
      step; recomputation's work grows with the sequence (quadratically in total).

    Both variants start from the same weights and the same generator seed and must draw the same
    tokens (the ``same`` column). Each cell is the best of ``--repeats`` timed runs after one
    warm-up (``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU).

How to run
    OMP_NUM_THREADS=1 python benchmarks/kv_cache.py                  # CPU, 1 thread
    python benchmarks/kv_cache.py --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_genai.ar.sampling import generate
from lit_genai.nn.transformer import GPT

NET = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128)  # shakespeare_char, CPU size


def timed(
    net: GPT, n: int, use_cache: bool, device: torch.device, repeats: int
) -> tuple[float, torch.Tensor]:
    """Best tokens/s over ``repeats`` runs (after a short warm-up) and the tokens of the last run."""
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    generate(net, prompt, 8, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(net, prompt, n, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n / best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[64, 1024])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), batch 1")
    header = f"{'block':>6} {'tokens':>7} {'cache tok/s':>12} {'recompute tok/s':>16} {'speed-up':>9} same"
    print(header)
    print("-" * len(header))
    for block in args.block_sizes:
        torch.manual_seed(0)
        net = GPT(block_size=block, **NET).to(device).eval()
        for n in args.tokens:
            fast, a = timed(net, n, True, device, args.repeats)
            slow, b = timed(net, n, False, device, args.repeats)
            same = "yes" if torch.equal(a, b) else "NO"
            print(f"{block:>6} {n:>7} {fast:>12.1f} {slow:>16.1f} {fast / slow:>8.1f}x {same}")


if __name__ == "__main__":
    main()
