"""Drawing the samples of requests: several requests in shared ``module.sample`` calls, and text
streamed as it is generated. Pure functions of a loaded module and checked ``Job`` s (no HTTP).

Sample i of a request is drawn from its own generator, ``seed + i`` (``paradigm.sample_generators``),
with its own condition row, so it does not depend on which other requests share its
``module.sample`` call (the contract's "a batch equals the same samples drawn one by one",
tests/test_contract.py), and a sample equals ``lit-genai predict``'s file of the same index and seed
(``lit_genai.api.generate``). Equal up to float round-off: a matrix product sums in an order that
can depend on the batch size (a one-row product takes another kernel than an eight-row one; kernels
without this are "batch-invariant", H. He and Thinking Machines Lab 2025, "Defeating Nondeterminism
in LLM Inference"), so a sample computed in floats (a diffusion or GAN image) can differ in a rare
pixel by one level of 255 between batch sizes. Sampled tokens (text, audio, token images) keep
their bytes: round-off of 1e-7 moves a token only when a uniform draw falls that close to a
boundary. ``--max_batch_size 1`` makes every response depend on its request alone.

Streaming (``stream_text``) continues a next-token model's sequence in chunks: each chunk is one
``module.sample(1, prompt=<the tokens so far>, max_new_tokens=k)`` call with the sample's one
generator, which carries on from where the last chunk left it, so the chunks draw the same tokens
as one call (up to float round-off: a cached step and a recomputed prefix can differ in the last
bits). Only the contract's sampling options are used, so any module whose options include
``prompt`` and ``max_new_tokens`` streams; other text models send their text in one event.

Shape legend: B samples of one ``module.sample`` call, T tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from lit_genai import paradigm
from lit_genai.api.generate import decode, join
from lit_genai.media import Media, Waveforms
from lit_genai.serve.requests import Job


def draw(module: Any, jobs: Sequence[Job], max_samples: int) -> list[Media]:
    """The media of ``jobs`` (one model, the same options), at most ``max_samples`` samples per
    ``module.sample`` call; one medium per job, in order."""
    generators = [
        g for job in jobs for g in paradigm.sample_generators(job.seed, range(job.start, job.start + job.n))
    ]
    cond = _concatenate([job.cond for job in jobs])
    options = jobs[0].options
    parts = []
    for first in range(0, len(generators), max_samples):
        chunk = generators[first : first + max_samples]
        chunk_cond = None if cond is None else {k: v[first : first + len(chunk)] for k, v in cond.items()}
        with torch.no_grad():
            samples = module.sample(len(chunk), cond=chunk_cond, generator=chunk, **options)
        parts.append(paradigm.finished(module, decode(module, samples), options))
    medium = join(parts)
    media, first = [], 0
    for job in jobs:
        media.append(take(medium, first, first + job.n))
        first += job.n
    return media


def take(medium: Media, begin: int, end: int) -> Media:
    """Samples ``begin:end`` of a medium."""
    if isinstance(medium, Waveforms):
        return Waveforms(medium.samples[begin:end], medium.sample_rate)
    return medium[begin:end]


def _concatenate(conds: Sequence[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """Each job's condition rows -> one (B, ...) row per sample of the batch (None: unconditional)."""
    if conds[0] is None:
        return None

    def rows(parts: list[Any]) -> Any:  # tensors are concatenated, captions (lists of str) joined
        return [row for part in parts for row in part] if isinstance(parts[0], list) else torch.cat(parts)

    return {name: rows([c[name] for c in conds]) for name in conds[0]}


def stream_text(module: Any, job: Job, tokens: int) -> Iterator[dict[str, Any]]:
    """Events of a text request, sample after sample: ``{"index": i, "text": <new text>}`` for each
    chunk of up to ``tokens`` new tokens, then ``{"index": i, "text": <the whole text>, "done": True}``
    (module docstring)."""
    for row in range(job.n):
        index = job.start + row
        generators = paradigm.sample_generators(job.seed, [index])
        cond = None if job.cond is None else {k: v[row : row + 1] for k, v in job.cond.items()}
        if not _tokenwise(module):
            with torch.no_grad():
                ids = module.sample(1, cond=cond, generator=generators, **job.options)
            text = paradigm.finished(module, decode(module, ids), job.options)[0]
            yield {"index": index, "text": text, "done": True}
            continue
        options = dict(job.options)
        remaining = int(module.sampling_settings(**options)["max_new_tokens"])
        options.pop("max_new_tokens", None)
        sent = ""
        ids: Optional[Tensor] = None
        while True:
            step = min(tokens, remaining)
            if ids is not None:
                options["prompt"] = ids[0]  # (T,): the sequence so far, carried on with the same generator
            with torch.no_grad():
                ids = module.sample(
                    1, cond=cond, generator=generators, max_new_tokens=step, **options
                )  # (1, T)
            remaining -= step
            text, ended = decode(module, ids)[0], False
            answer = (
                module.response(text, **job.options) if callable(getattr(module, "response", None)) else None
            )
            if answer is not None:  # a fine-tuned chat model: its response only, up to the stop
                text, ended = answer
            # A prefix of tokens may not decode to a prefix of the text (a multi-byte character cut
            # in two by byte-level tokens): such text waits for the next chunk.
            if text.startswith(sent) and len(text) > len(sent):
                yield {"index": index, "text": text[len(sent) :]}
                sent = text
            if remaining <= 0 or ended:
                break
        yield {"index": index, "text": text, "done": True}


def _tokenwise(module: Any) -> bool:
    return {"prompt", "max_new_tokens"} <= set(module.sampling_settings())
