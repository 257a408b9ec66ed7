"""Sampling from next-token models: logit filters, one draw per row, and the generation loop.

- Temperature (Ackley et al. 1985; as in GPT-2 sampling): logits / tau; tau = 0 is greedy decoding.
- Top-k (Fan et al. 2018, "Hierarchical Neural Story Generation", sec. 5.4): keep the k most likely
  tokens (ties with the k-th kept too).
- Top-p / nucleus (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", sec. 3.1,
  eq. 2): keep the smallest set of most likely tokens whose probability is at least p (always at
  least the most likely one).

Applied in that order (temperature, top-k, top-p), as Hugging Face ``generate`` does. Each token is
drawn by inverting the cumulative distribution at a uniform number drawn from the generator, on the
generator's device, and moved (``lit_genai.paradigm.randn``'s convention): with CPU generators, CPU and
GPU runs draw the same numbers, and with one generator per row, row i depends on ``generator[i]`` only.

Shape legend: B batch, V vocabulary, T0 prompt tokens, N new tokens.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_genai import paradigm
from lit_genai.errors import ConfigError


def check_options(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    """Raise one ``ConfigError`` line for a temperature < 0, top_k < 1 or top_p outside (0, 1]."""
    if temperature < 0:
        raise ConfigError(f"temperature={temperature} must be >= 0 (0: greedy decoding)")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1 (or null: no top-k filter)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} must be in (0, 1] (or null: no nucleus filter)")


def check_prompt(prompt: Tensor, max_new_tokens: int) -> None:
    """A (B, T0) prompt with T0 >= 1 and max_new_tokens >= 0, or one ``ConfigError`` line (every
    sampling loop, eager or over an exported step, checks the same)."""
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ConfigError(
            f"the prompt must be (B, T0) token ids with T0 >= 1, got shape {tuple(prompt.shape)}"
        )
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 0")


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None
) -> Tensor:
    """Scaled logits with the excluded tokens at -inf (module docstring).

    Args:
        logits: (B, V) next-token logits.
        temperature: divide the logits by it; 0 keeps only the most likely token (the first on ties).
        top_k: keep the ``top_k`` largest logits (and any tied with the k-th); None: all.
        top_p: keep the smallest set of most likely tokens whose probability (after temperature and
            top-k) is at least ``top_p``; None or 1: all.

    Returns:
        (B, V) float32 logits; softmax of them is the sampling distribution.
    """
    check_options(temperature, top_k, top_p)
    logits = logits.float()
    neg_inf = torch.tensor(float("-inf"), device=logits.device)
    if temperature == 0:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.argmax(-1, keepdim=True), True)
        return torch.where(keep, 0.0, neg_inf)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = torch.where(logits < kth, neg_inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p  # the set before them already holds p; the first is always kept
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _uniform(n: int, generator: paradigm.Generators, device: torch.device) -> Tensor:
    """(n,) uniforms in [0, 1), row i from ``generator[i]`` when there is one per row, drawn on the
    generator's device and moved (``paradigm.randn``'s convention)."""
    generators = paradigm._per_sample(generator, n)
    if generators is not None:
        rows = [torch.rand((), generator=g, device=g.device).to(device) for g in generators]
        return torch.stack(rows) if rows else torch.zeros(0, device=device)
    noise_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=noise_device).to(device)


def sample_next(logits: Tensor, generator: paradigm.Generators = None) -> Tensor:
    """One token per row from softmax(logits): (B, V) -> (B,) int64.

    Inverse-CDF sampling: the token is the first whose cumulative probability exceeds u ~ U[0, 1)
    from ``generator`` (one for the batch or one per row), so a token of probability 0 (-inf logit)
    is never drawn.
    """
    probs = logits.float().softmax(-1)  # (B, V)
    cdf = probs.cumsum(-1)
    u = _uniform(logits.shape[0], generator, logits.device)[:, None] * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1)[:, 0]


def next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: paradigm.Generators = None,
) -> Tensor:
    """The next token of every row, (B, V) logits -> (B,) int64: the most likely one for temperature
    0 (greedy, no number drawn), else one drawn from ``filter_logits`` by ``sample_next``; every
    sampling loop picks its tokens here."""
    if temperature == 0:
        return logits.argmax(-1)
    return sample_next(filter_logits(logits, temperature, top_k, top_p), generator)


@torch.no_grad()
def generate(
    net: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    cond: Optional[Tensor] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: paradigm.Generators = None,
    use_cache: bool = True,
    local: Optional[Tensor] = None,
    progress: bool = False,
) -> Tensor:
    """Autoregressive sampling: the prompt followed by ``max_new_tokens`` drawn tokens.

    With ``use_cache`` the prompt (its last ``block_size`` tokens) is run once through a fresh
    ``KVCache`` and every later step feeds only the token just drawn. Once the sequence is longer
    than ``block_size``, the cache cannot hold the context any more and the loop falls back to
    recomputing the last ``block_size`` tokens each step, as ``use_cache=False`` does throughout;
    both give the same logits (to float round-off), hence the same tokens under the same
    generator. The net runs in eval mode (``paradigm.eval_mode``) without gradients.

    Args:
        net: a causal next-token network with ``block_size`` and ``init_cache`` (``nn.transformer.GPT``):
            ``net(idx (B, T), cond, cache=None) -> (B, T, V)``.
        prompt: (B, T0) int64 token ids, T0 >= 1.
        max_new_tokens: number N of tokens to draw.
        cond: (B,) int64 class labels of a class-conditional net, else None.
        temperature, top_k, top_p: the filters of ``filter_logits``; temperature 0 is greedy.
        generator: one ``torch.Generator`` for the batch or one per row (row i draws from
            ``generator[i]`` only), or None (the global generator).
        use_cache: decode incrementally with the net's cache (False: recompute every step). A cache
            with ``rolling = True`` (WaveNet's per-layer queues, Paine et al. 2016) never fills:
            stepping goes on past ``block_size``, and a prompt of any length fills it.
        local: (B, C, frames) local conditioning features of a net that takes them
            (``nn.wavenet.WaveNet(local_channels=C)``), covering the prompt and the new tokens;
            passed as ``local=`` to every call, with ``offset`` (the window's first position) when
            a window of the last ``block_size`` tokens is recomputed.
        progress: show a tqdm bar over the new tokens.

    Returns:
        (B, T0 + N) int64 token ids.
    """
    check_options(temperature, top_k, top_p)
    check_prompt(prompt, max_new_tokens)
    block = int(net.block_size)
    B = prompt.shape[0]
    paradigm._per_sample(generator, B)  # one generator per row: check the count before any work
    seq = prompt.long()
    if max_new_tokens == 0:
        return seq
    steps = tqdm(range(max_new_tokens), desc="generate", unit="tok", disable=not progress, leave=False)
    extra = {} if local is None else {"local": local}
    with paradigm.eval_mode(net):
        cache = net.init_cache(B, device=seq.device) if use_cache else None
        rolling = bool(getattr(cache, "rolling", False))  # a cache that never fills (WaveNet's queues)
        if cache is not None and not rolling and seq.shape[1] > block:
            cache = None  # the prompt alone overflows the KV cache
        logits = _step(net, seq, block, cond, cache, rolling, extra)  # (B, V)
        tokens = [seq]
        length = seq.shape[1]
        for step in steps:
            nxt = next_token(logits, temperature, top_k, top_p, generator)  # (B,)
            tokens.append(nxt[:, None])
            length += 1
            if step == max_new_tokens - 1:
                break
            if cache is not None and (rolling or length <= block):
                logits = net(nxt[:, None], cond, cache=cache, **extra)[:, -1]
            else:  # context full (or no cache): recompute over the last block_size tokens
                cache = None
                seq = torch.cat(tokens, dim=1)
                tokens = [seq]
                logits = _step(net, seq, block, cond, None, False, extra)
    return torch.cat(tokens, dim=1)


def _step(
    net: nn.Module, seq: Tensor, block: int, cond: Optional[Tensor], cache: Any, rolling: bool, extra: dict
) -> Tensor:
    """The last position's logits (B, V) of a pass without a cache, or one filling a fresh cache:
    over the last ``block_size`` tokens, or the whole prompt for a rolling cache. With local
    features (``extra["local"]``, aligned with position 0), a window tells the net where it starts
    (``offset``)."""
    if cache is not None and rolling:
        return net(seq, cond, cache=cache, **extra)[:, -1]
    start = max(seq.shape[1] - block, 0)
    if "local" in extra:
        return net(seq[:, start:], cond, cache=cache, offset=start, **extra)[:, -1]
    return net(seq[:, start:], cond, cache=cache)[:, -1]


@torch.no_grad()
def generate_in_place(
    net: nn.Module,
    n: int,
    length: int,
    *,
    prompt: Optional[Tensor] = None,
    cond: Optional[Tensor] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: paradigm.Generators = None,
    device: Optional[torch.device] = None,
    progress: bool = False,
    fast: bool = True,
) -> Tensor:
    """Autoregressive sampling for a net whose logits at position t predict token t itself from
    the tokens before t (``target_offset = 0``, e.g. ``nn.pixelcnn.GatedPixelCNN``).

    The sequence starts as the prompt followed by zeros; position t = T0 .. length - 1 is drawn from
    a full forward pass over the whole sequence, whose output at t cannot see positions >= t. Each
    token costs one pass of the net (PixelCNN sampling, van den Oord et al. 2016, sec. 2).

    A net with an exact incremental sampler, ``net.sample_in_place(seq, start, draw, cond)`` (it
    calls ``draw(logits (B, V), t) -> (B,)`` for t = start .. length - 1 in order with the logits
    the full pass would give, and writes the tokens into ``seq``; ``GatedPixelCNN``), is run through
    it when ``length == net.block_size``: the same draws from the same numbers, at a fraction of the
    cost.

    Args:
        net: ``net(idx (B, length), cond) -> (B, length, V)``, causal in the sense above.
        n: number B of sequences.
        length: tokens per sequence (an image's C*H*W positions for a PixelCNN).
        prompt: (B, T0) or (T0,) int64 tokens kept at the first positions (e.g. the top rows of an
            image to complete), or None.
        cond, temperature, top_k, top_p, generator, progress: as for ``generate``.
        device: where the sequence lives (default: the net's parameters' device).
        fast: use the net's ``sample_in_place`` when it has one (False: always the full passes).

    Returns:
        (B, length) int64 token ids.
    """
    check_options(temperature, top_k, top_p)
    paradigm._per_sample(generator, n)
    if device is None:
        device = next(net.parameters()).device
    seq = torch.zeros(n, length, dtype=torch.long, device=device)
    start = 0
    if prompt is not None:
        prompt = prompt.to(device, torch.long)
        prompt = prompt.expand(n, -1) if prompt.dim() == 1 else prompt
        start = prompt.shape[1]
        if start > length:
            raise ConfigError(f"the prompt has {start} tokens, more than the {length} of a sequence")
        seq[:, :start] = prompt
    # A net that gives the same logits for a prefix of whole rows (GatedPixelCNN: no layer looks at
    # later rows) is run on the rows up to t only: on average half the work of the whole image.
    row = int(getattr(net, "tokens_per_row", 0) or length)
    steps = tqdm(range(start, length), desc="generate", unit="tok", disable=not progress, leave=False)
    incremental = getattr(net, "sample_in_place", None) if fast else None
    if callable(incremental) and length == getattr(net, "block_size", None):

        def draw(logits: Tensor, t: int) -> Tensor:  # (B, V) -> (B,), as the loop below draws
            steps.update(1)
            return next_token(logits, temperature, top_k, top_p, generator)

        with paradigm.eval_mode(net):
            incremental(seq, start, draw, cond)
        steps.close()
        return seq
    with paradigm.eval_mode(net):
        for t in steps:
            prefix = seq[:, : min(length, (t // row + 1) * row)]  # (B, rows up to t)
            logits = net(prefix, cond)[:, t] if cond is not None else net(prefix)[:, t]  # (B, V)
            seq[:, t] = next_token(logits, temperature, top_k, top_p, generator)
    return seq
