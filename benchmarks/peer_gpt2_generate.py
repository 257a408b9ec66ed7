"""Greedy generation: ``lit_genai.ar.sampling.generate`` against ``GPT2LMHeadModel.generate`` (transformers).

What it measures
    Tokens per second of greedy decoding (temperature 0 on our side, ``do_sample=False`` on theirs)
    of ``--new-tokens`` new tokens (default 256) from a short prompt (``--prompt`` random token
    ids, default 8), at each of ``--batch`` sizes (default 1 and 8), with the SAME weights on both
    sides, in one run:

    - ``ours``: ``lit_genai.nn.transformer.GPT`` with ``generate(..., temperature=0)`` and its KV
      cache (the prompt once, then one token per step; ``F.scaled_dot_product_attention``);
    - ``transformers``: ``GPT2LMHeadModel`` (``attn_implementation="sdpa"``, its default) built from
      ``lit_genai.export.huggingface.gpt2_config`` with our weights copied in by ``gpt2_state_dict``,
      and ``generate(max_new_tokens=N, do_sample=False)`` with its ``DynamicCache``. End of text is
      switched off (``eos_token_id=None``), so both always emit exactly N tokens.

    The network is GPT-2 small in shape (12 layers, 12 heads, 768 wide, vocabulary 50257, context
    1024, biases, tanh GELU: ``gpt2_config`` maps it to ``gelu_new``), with random weights (GPT-2's
    initialisation, std 0.02) seeded locally: nothing is downloaded. float32 on both sides.
    ``--layers`` makes it shallower for a quick run. The two sides take turns, ``--repeats`` times
    each (so a machine whose speed drifts slows both alike), after one short warm-up call each;
    a cell is the best of those runs (``time.perf_counter``, after ``torch.cuda.synchronize`` on a
    GPU). The ``same`` column says whether the two produced identical token ids; where they do not,
    the script reports the first differing step and the gap between the two best logits there (a
    near-tie of random weights that float round-off can flip).

How to run
    OMP_NUM_THREADS=1 python benchmarks/peer_gpt2_generate.py                 # 256 tokens, batch 1 and 8
    OMP_NUM_THREADS=1 python benchmarks/peer_gpt2_generate.py --new-tokens 64 --batch 1 --layers 4
    python benchmarks/peer_gpt2_generate.py --device cuda --repeats 5

How to read the ratio
    ``ours / transformers`` is a tokens/s ratio: 1.20x means our loop generates 20 % more tokens per
    second than ``GPT2LMHeadModel.generate`` on the same network. Tokens/s counts the new tokens of
    all rows (batch x N per run).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from lit_genai.ar.sampling import generate
from lit_genai.export.huggingface import gpt2_config, gpt2_state_dict
from lit_genai.nn.transformer import GPT

NET = dict(vocab_size=50257, block_size=1024, n_head=12, n_embd=768, bias=True, activation="gelu_tanh")
SEED = 0


def build(layers: int, device: torch.device) -> tuple[GPT, torch.nn.Module]:
    """Our GPT (seeded random weights) and a GPT2LMHeadModel holding the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    ours = GPT(n_layer=layers, dropout=0.0, **NET).eval()
    config = gpt2_config(ours) | dict(bos_token_id=None, eos_token_id=None)  # never stop early
    theirs = GPT2LMHeadModel(GPT2Config(**config, attn_implementation="sdpa")).eval()
    missing, unexpected = theirs.load_state_dict(gpt2_state_dict(ours), strict=False)
    # transformers keeps no weights under other names; anything missing must be a non-persistent buffer
    if unexpected or any(not k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing):
        raise RuntimeError(f"weights did not map: missing {missing[:4]}, unexpected {unexpected[:4]}")
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 0  # unused (no padding), silences the warning
    return ours.to(device), theirs.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(net: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    return generate(net, prompt, n, temperature=0.0)  # (B, T0 + n)


def run_theirs(model: torch.nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
    )  # (B, T0 + n)


def first_difference(ours: GPT, a: torch.Tensor, b: torch.Tensor, t0: int) -> str:
    """Where two greedy outputs first part, and how close the two best logits were there."""
    rows, cols = torch.nonzero(a != b, as_tuple=True)
    col = int(cols.min())
    row = int(rows[cols == col][0])
    with torch.no_grad():
        logits = ours(a[row : row + 1, :col])[0, -1].double()  # (V,)
    top2 = torch.topk(logits, 2).values
    return (
        f"row {row}, new token {col - t0} of {a.shape[1] - t0}: ours {int(a[row, col])}, "
        f"transformers {int(b[row, col])}; the top-2 logits there differ by {float(top2[0] - top2[1]):.1e}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--layers", type=int, default=12, help="transformer layers (default 12: GPT-2 small)")
    parser.add_argument("--prompt", type=int, default=8, help="prompt length in tokens (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side and batch (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    if min(args.new_tokens, args.layers, args.prompt, args.repeats, *args.batch) < 1:
        parser.error("--new-tokens, --batch, --layers, --prompt and --repeats must be >= 1")
    if args.prompt + args.new_tokens > NET["block_size"]:
        parser.error(f"--prompt + --new-tokens must fit the context of {NET['block_size']} tokens")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    try:
        import transformers
    except ImportError:
        parser.error("this benchmark needs the transformers package: pip install 'lit_genai[interop]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    device = torch.device(args.device)
    ours, theirs = build(args.layers, device)
    n_params = sum(p.numel() for p in ours.parameters())
    print(
        f"\nGreedy generation, GPT-2-small shape ({args.layers} layers, 12 heads, 768 wide, V=50257, "
        f"context 1024, {n_params / 1e6:.1f}M params, random weights, float32), prompt {args.prompt} "
        f"tokens, {args.new_tokens} new tokens, {device}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats} "
        "interleaved runs each"
    )
    header = f"{'batch':>5} {'ours tok/s':>11} {'transformers tok/s':>19} {'ours / theirs':>14} same"
    print(header)
    print("-" * len(header))
    notes = []
    for batch in args.batch:
        g = torch.Generator().manual_seed(SEED + batch)
        prompt = torch.randint(0, NET["vocab_size"], (batch, args.prompt), generator=g).to(device)
        sides = {"ours": lambda p=prompt: run_ours(ours, p, args.new_tokens)}
        sides["theirs"] = lambda p=prompt: run_theirs(theirs, p, args.new_tokens)
        run_ours(ours, prompt, 4)  # warm-up
        run_theirs(theirs, prompt, 4)
        best = {name: float("inf") for name in sides}
        out = {}
        for _ in range(args.repeats):
            for name, run in sides.items():
                sync(device)
                start = time.perf_counter()
                out[name] = run()
                sync(device)
                best[name] = min(best[name], time.perf_counter() - start)
        rate = {name: batch * args.new_tokens / seconds for name, seconds in best.items()}
        same = torch.equal(out["ours"], out["theirs"])
        print(
            f"{batch:>5} {rate['ours']:>11.1f} {rate['theirs']:>19.1f} "
            f"{rate['ours'] / rate['theirs']:>13.2f}x {'yes' if same else 'NO'}"
        )
        if not same:
            notes.append(f"batch {batch}: " + first_difference(ours, out["ours"], out["theirs"], args.prompt))
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
