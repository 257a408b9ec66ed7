"""Generation-based evaluation of a language task: answer each prompt, score against the reference.

For (prompt, reference) pairs (a data module's ``task_examples(split)``, the prompt already rendered
by its template), each prompt is encoded with the module's vocabulary (``NextToken.encode``, as
``predict --model.sampling.prompt`` does), continued by ``NextToken.sample`` (greedy by default, LoRA
adapters merged), cut at the first stop string (a newline: one answer per line), decoded, and scored
by ``lit_genai.metrics.text_tasks.task_scores`` (exact match, chrF, BLEU, ROUGE-L, all in [0, 1]).

Prompts are answered one at a time: prompts of different lengths would need left padding, which
the causal nets here do not mask; the sample's key/value cache keeps each answer linear in its length.

Shape legend: T0 prompt tokens, N new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from lit_genai.errors import ConfigError
from lit_genai.metrics.text_tasks import task_scores


def first_answer(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest of the ``stop`` strings."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def evaluate_task(
    module: Any,
    examples: Sequence[tuple[str, str]],
    max_new_tokens: int,
    greedy: bool = True,
    *,
    stop: Sequence[str] = ("\n",),
    num_rows: int = 8,
    seed: int = 0,
    encode: Optional[Callable[[str], Sequence[int]]] = None,
    decode: Optional[Callable[[Sequence[int]], str]] = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Answer every prompt and score the answers: ``(task_scores, rows)``.

    Args:
        module: A token module with ``sample(n, prompt=..., max_new_tokens=..., temperature=...)``
            (``ar.NextToken``) and, unless ``encode`` / ``decode`` are given, a vocabulary.
        examples: (prompt text, reference answer) pairs.
        max_new_tokens: The longest answer, in tokens.
        greedy: Greedy decoding (temperature 0); False samples with the module's sampling settings,
            example i with the generator seed ``seed + i`` (reproducible).
        stop: An answer ends before the first of these strings (the newline that ends a template's
            answer line, or an end-of-text symbol).
        num_rows: How many (prompt, reference, output) rows to return, from the first examples
            (for a W&B table or a predictions file).
        encode: text -> token ids (default: ``module.encode``); decode: token ids -> text (default:
            ``module.decode``), for tokenizers outside the module.
    """
    if not examples:
        raise ConfigError("evaluate_task got no examples: give (prompt, reference) pairs of the split")
    encode = encode or (lambda text: module.encode(text).tolist())
    decode = decode or (lambda ids: module.decode(torch.tensor([list(ids)], dtype=torch.long))[0])
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if greedy:
        options["temperature"] = 0.0
    outputs = []
    for i, (prompt, _) in enumerate(examples):
        ids = torch.tensor(list(encode(prompt)), dtype=torch.long)  # (T0,)
        generator = None if greedy else torch.Generator(module.device).manual_seed(seed + i)
        tokens = module.sample(1, prompt=ids, generator=generator, **options)  # (1, T0 + N)
        continuation = tokens[0, ids.numel() :].tolist()  # the N new tokens
        outputs.append(first_answer(decode(continuation), stop))
    references = [reference for _, reference in examples]
    rows = [
        {"prompt": prompt, "reference": reference, "output": output}
        for (prompt, reference), output in zip(examples[:num_rows], outputs, strict=False)
    ]
    return task_scores(outputs, references), rows
