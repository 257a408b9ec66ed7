"""MaskGIT's iterative parallel decoding (Chang et al. 2022, sec. 3.2), a pure loop over a logits function.

Start from a sequence whose unknown positions hold the [MASK] id; at step t = 0 .. T - 1:

1. predict: logits of every position from the current sequence (with classifier-free guidance,
   l = l_cond + w (l_cond - l_uncond), Ho & Salimans 2022 eq. 6 on logits, both passes as one
   batch; w = 0 is plain conditional decoding and runs no unconditional pass). The condition is
   whatever ``logits_fn`` reads, batch first: labels (B,), a text context, or a tuple of them; the
   unconditional pass gets ``null_cond`` (the null label, the empty captions' context);
2. sample: a token for every masked position from the logits after temperature / top-k
   (``lit_genai.ar.sampling.filter_logits``); its confidence is the model's probability of it,
   softmax(l) at the token, as in the reference decoder (so a greedy draw still ranks positions);
   positions already known have infinite confidence;
3. mask: keep masked the n_t positions with the lowest log-confidence + tau (1 - (t + 1) / T) g,
   g ~ Gumbel(0, 1) ("choice temperature" tau, annealed to 0), where
   n_t = floor(gamma((t + 1) / T) n_0), n_0 the unknown positions at the start, clamped to
   [1, n_now - 1] (every step fixes at least one token and leaves at least one for the next);
   at the last step n_t = 0, so nothing stays masked.

Tokens known at the start (a prompt, the kept part of an image) and tokens fixed at an earlier step
are never changed. This follows the reference code (maskgit ``libml/parallel_decode.py``), except
that exactly n_t positions are re-masked (a rank, not a ``confidence < cut-off`` test, which masks
fewer on ties).

Random numbers follow ``lit_genai.ar.sampling``: every draw is a uniform from the generator, on the
generator's device, then moved; with one generator per row, row i's 2N uniforms of a step come
from ``generator[i]`` alone, so a row does not depend on the others or on the batch size.

Shape legend: B batch, N tokens per sequence, V vocabulary (logits), T steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_genai import paradigm
from lit_genai.ar.sampling import check_options, filter_logits
from lit_genai.errors import ConfigError
from lit_genai.masked.schedules import Schedule, mask_schedule

LogitsFn = Callable[[Tensor, Any], Tensor]
"""(tokens (B, N) int64, condition) -> logits (B, N, V); the condition: (B,) int64 labels, None, or
any tensors with the batch first (a tuple, a ``TextContext``: ``cat_conditions``)."""


def cat_conditions(first: Any, second: Any) -> Any:
    """Two conditions of the same structure stacked along the batch: tensors (B, ...) -> (2B, ...),
    inside tuples (named ones keep their type) and dicts; None stays None."""
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat([first, second])
    if isinstance(first, dict):
        return {k: cat_conditions(v, second[k]) for k, v in first.items()}
    parts = [cat_conditions(a, b) for a, b in zip(first, second, strict=True)]
    return type(first)(*parts) if hasattr(first, "_fields") else tuple(parts)


def uniform_rows(shape: tuple[int, int], generator: paradigm.Generators, device: torch.device) -> Tensor:
    """(B, M) uniforms in [0, 1): row i from ``generator[i]`` when there is one per row (module docstring)."""
    B, M = shape
    per_row = paradigm._per_sample(generator, B)
    if per_row is None:
        source = device if generator is None else generator.device
        return torch.rand((B, M), generator=generator, device=source).to(device)
    rows = [torch.rand(M, generator=g, device=g.device).to(device) for g in per_row]
    return torch.stack(rows) if rows else torch.zeros((0, M), device=device)


def gumbel(u: Tensor) -> Tensor:
    """Gumbel(0, 1) noise -log(-log u) from uniforms u in [0, 1) (u = 0 is moved to the smallest float)."""
    return -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))


def draw_tokens(logits: Tensor, u: Tensor) -> Tensor:
    """One token per position from softmax(logits) by inverting its CDF at u.

    Args:
        logits: (B, N, V) filtered logits (-inf: never drawn).
        u: (B, N) uniforms in [0, 1).

    Returns:
        (B, N) int64 token ids.
    """
    cdf = logits.float().softmax(-1).cumsum(-1)  # (B, N, V)
    target = (u * cdf[..., -1])[..., None]  # (B, N, 1)
    return torch.searchsorted(cdf, target, right=True)[..., 0].clamp_(max=logits.shape[-1] - 1)


def kept_masked(step: int, steps: int, n_start: Tensor, n_now: Tensor, schedule: Schedule) -> Tensor:
    """n_t, the positions left masked after step ``step`` (module docstring, point 3).

    Args:
        step: t in [0, T).
        steps: T.
        n_start: (B,) unknown positions at the start.
        n_now: (B,) unknown positions before this step.
        schedule: the mask schedule gamma.

    Returns:
        (B,) int64: floor(gamma((t + 1) / T) n_start) clamped to [1, n_now - 1] (never above n_now),
        and 0 at the last step.
    """
    if step == steps - 1:
        return torch.zeros_like(n_now)
    gamma = mask_schedule(torch.tensor((step + 1) / steps, dtype=torch.float64), schedule)
    n = torch.floor(gamma * n_start.double()).long()  # (B,)
    return torch.minimum(torch.clamp(torch.minimum(n, n_now - 1), min=1), n_now)


@torch.no_grad()
def maskgit_decode(
    logits_fn: LogitsFn,
    tokens: Tensor,
    *,
    mask_id: int,
    steps: int,
    schedule: Schedule = "cosine",
    choice_temperature: float = 4.5,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    guidance: float = 0.0,
    cond: Any = None,
    null_label: Optional[int] = None,
    null_cond: Any = None,
    generator: paradigm.Generators = None,
    progress: bool = False,
) -> Tensor:
    """Fill the masked positions of ``tokens`` in ``steps`` parallel steps (module docstring).

    Args:
        logits_fn: ``(tokens (B, N), labels (B,) or None) -> (B, N, V)`` logits of the token at each
            position (a bidirectional network; a logit of ``mask_id`` itself, if V has it, is ignored).
        tokens: (B, N) int64 ids, ``mask_id`` at the positions to fill.
        mask_id: the [MASK] id.
        steps: T >= 1 decoding steps.
        schedule: the mask schedule gamma (``lit_genai.masked.schedules``; MaskGIT: cosine).
        choice_temperature: tau of the Gumbel noise in the choice of the positions to keep masked
            (MaskGIT: 4.5); 0: the least confident positions exactly.
        temperature: softmax temperature of the token draws (0: the most likely token).
        top_k: draw among the k most likely tokens only (None: all).
        guidance: classifier-free guidance weight w (0: conditional decoding, no unconditional pass).
        cond: what ``logits_fn`` is conditioned on: (B,) int64 labels of a class-conditional one, any
            batch-first tensors (``LogitsFn``), or None.
        null_label: the label of the unconditional pass, for labels ``cond``.
        null_cond: the condition of the unconditional pass, the structure of ``cond`` (instead of
            ``null_label``: a text context, labels and text). One of the two is needed when
            ``guidance`` is not 0.
        generator: one ``torch.Generator`` for the batch or one per row, or None (the global one).
        progress: show a tqdm bar over the steps.

    Returns:
        (B, N) int64 ids without ``mask_id``; the tokens given at the start are unchanged.
    """
    check_options(temperature, top_k, None)
    if tokens.dim() != 2:
        raise ValueError(f"maskgit_decode: tokens must be (B, N) int64 ids, got shape {tuple(tokens.shape)}")
    if steps < 1:
        raise ConfigError(f"steps={steps}: masked decoding needs at least one step")
    if choice_temperature < 0:
        raise ConfigError(f"choice_temperature={choice_temperature} must be >= 0 (MaskGIT: 4.5)")
    if guidance != 0 and (cond is None or (null_label is None and null_cond is None)):
        raise ConfigError(
            f"guidance={guidance} needs a class-conditional model and labels (or a text-conditional "
            "one and captions): set guidance 0 or train a conditional net"
        )
    if guidance != 0 and null_cond is None:
        null_cond = torch.full_like(cond, null_label)
    B, N = tokens.shape
    paradigm._per_sample(generator, B)  # one generator per row: check the count before any work
    seq = tokens.long().clone()
    n_start = (seq == mask_id).sum(1)  # (B,)
    bar = tqdm(range(steps), desc="maskgit", unit="step", disable=not progress, leave=False)
    for t in bar:
        unknown = seq == mask_id  # (B, N)
        if not bool(unknown.any()):
            break
        logits = _guided_logits(logits_fn, seq, cond, guidance, null_cond)  # (B, N, V) float32
        if 0 <= mask_id < logits.shape[-1]:
            logits[..., mask_id] = float("-inf")  # [MASK] is never a prediction
        u = uniform_rows((B, 2 * N), generator, seq.device)  # (B, 2N): token draws, then choice noise
        filtered = filter_logits(logits.flatten(0, 1), temperature, top_k).view_as(logits)
        sampled = torch.where(unknown, draw_tokens(filtered, u[:, :N]), seq)  # (B, N)
        keep = kept_masked(t, steps, n_start, unknown.sum(1), schedule)  # (B,)
        if not bool(keep.any()):
            seq = sampled
            continue
        log_conf = logits.log_softmax(-1).gather(-1, sampled[..., None])[..., 0]  # (B, N)
        score = log_conf + choice_temperature * (1.0 - (t + 1) / steps) * gumbel(u[:, N:])
        score = torch.where(unknown, score, math.inf)  # known positions are never re-masked
        rank = torch.empty_like(seq).scatter_(
            1, score.argsort(dim=1, stable=True), torch.arange(N, device=seq.device).expand(B, N)
        )  # (B, N): 0 for the least confident position
        seq = torch.where(rank < keep[:, None], mask_id, sampled)
    return seq


def token_fill_mask(pixel_mask: Tensor, token_shape: tuple[int, int]) -> Tensor:
    """Where image inpainting fills tokens: (B, 1, H, W) bool pixels to fill -> (B, h·w) bool in raster
    order. A token covers an (H / h) x (W / w) cell of pixels (the tokenizer's downsampling) and is
    known only if all of its pixels are: it is filled if any pixel of its cell is."""
    h, w = (int(s) for s in token_shape)
    B, _, H, W = pixel_mask.shape
    if H % h or W % w:
        raise ConfigError(
            f"a {H}x{W} mask does not tile a {h}x{w} token grid: give a mask of the images' size"
        )
    cells = pixel_mask.reshape(B, h, H // h, w, W // w)  # (B, h, H/h, w, W/w)
    return cells.any(dim=4).any(dim=2).reshape(B, h * w)  # (B, h·w)


def inpainting_tokens(source: Tensor, fill: Tensor, mask_id: int) -> Tensor:
    """The start of image inpainting: the source's tokens (B, N) with [MASK] where ``fill`` (B, N) is
    True; ``maskgit_decode`` fills those and keeps the rest, as it keeps a prompt's known tokens."""
    return torch.where(fill.to(source.device), torch.full_like(source, mask_id), source.long())


def _guided_logits(logits_fn: LogitsFn, seq: Tensor, cond: Any, guidance: float, null_cond: Any) -> Tensor:
    """l_cond + w (l_cond - l_uncond) in float32, the two passes as one batch of 2B; w = 0: l_cond."""
    if guidance == 0:
        return logits_fn(seq, cond).float()
    both = logits_fn(torch.cat([seq, seq]), cat_conditions(cond, null_cond)).float()  # (2B, N, V)
    l_cond, l_uncond = both.chunk(2)
    return l_cond + guidance * (l_cond - l_uncond)
