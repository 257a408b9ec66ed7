"""Offline language tasks for supervised fine-tuning: prompt/response pairs built from what every
Python has (``num2words``, the standard library's docstrings and help topics), deterministic from a
seed, split into train / val / test with the held-out items never in training.

Tasks (``TASKS``; ``data.prompt_response.PromptResponse(task=...)``):

- ``numbers_fr`` / ``numbers_de``: English number words -> French / German number words
  (``num2words``), for the numbers ``0 .. max_number``: ``"translate to French: three hundred and
  forty-seven"`` -> ``"trois cent quarante-sept"``. Held-out numbers test composition (a model that
  knows "trois cent" and "quarante-sept" from other numbers).
- ``docstring_summary``: the body of a standard-library docstring -> its summary line (the first
  line of the docstrings of the builtins and the public callables of a few pure modules, those with
  a summary, a blank line and a body); PEP 257's docstring convention makes the pairs.
- ``help_qa``: ``"What does the help topic "for" say first?"`` -> the first sentence of that help
  topic's text (``pydoc_data.topics``); a memorisation task (a held-out topic cannot be known).

The split: a permutation of the items seeded by ``seed``; ``val_fraction`` of them (at least one) for
validation, as many again for test, the rest trains. The docstring tasks depend on the Python
version (its docstrings), never on the machine.

Shape legend: none (strings only).
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from collections.abc import Callable

from lit_genai.data.text_sources import pydoc_topics
from lit_genai.errors import ConfigError

Record = dict[str, str]  # {"prompt": ..., "response": ...}
Splits = dict[str, list[Record]]  # "train" / "val" / "test" -> records

LANGUAGES = {"fr": "French", "de": "German"}
# Modules whose public callables give docstring_summary its pairs (pure Python or C, always present).
DOCSTRING_MODULES = (
    "builtins",
    "math",
    "itertools",
    "functools",
    "os.path",
    "json",
    "textwrap",
    "string",
    "shutil",
    "random",
    "statistics",
    "collections",
    "heapq",
    "bisect",
)


def split_items(records: list[Record], seed: int, val_fraction: float) -> Splits:
    """A seeded permutation of ``records`` cut into val (``val_fraction``, at least one), test (as
    many) and train (the rest)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * val_fraction)) if val_fraction > 0 else 0
    if len(records) <= 2 * n_val:
        raise ConfigError(
            f"data.init_args.val_fraction={val_fraction} leaves no training example of "
            f"{len(records)}: lower it"
        )
    pick = [records[i] for i in order]
    return {"val": pick[:n_val], "test": pick[n_val : 2 * n_val], "train": pick[2 * n_val :]}


def number_records(language: str, max_number: int = 999) -> list[Record]:
    """English number words -> ``language``'s (``fr`` or ``de``), for 0 .. ``max_number``."""
    from num2words import num2words

    name = LANGUAGES[language]
    return [
        {"prompt": f"translate to {name}: {num2words(n, lang='en')}", "response": num2words(n, lang=language)}
        for n in range(max_number + 1)
    ]


def docstring_records() -> list[Record]:
    """(docstring body -> summary line) of the public callables of ``DOCSTRING_MODULES``, sorted by
    qualified name; only docstrings with a summary line, a blank line and a body of prose."""
    out: dict[str, Record] = {}
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if name.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            summary, _, body = doc.partition("\n\n")
            summary, body = " ".join(summary.split()), body.strip()
            if not body or body.startswith(">>>") or len(summary) < 10 or "(" in summary.split(" ")[0]:
                continue  # no examples-only bodies, no signature lines
            out.setdefault(f"{module_name}.{name}", {"prompt": f"Summarise: {body}", "response": summary})
    unique: dict[str, Record] = {}  # one record per body: aliases (os.path.join in shutil, ...) once
    for key in sorted(out):
        unique.setdefault(out[key]["prompt"], out[key])
    return list(unique.values())


_SENTENCE = re.compile(r"(.+?[.:])(\s|$)", re.S)


def help_qa_records() -> list[Record]:
    """(``What does the help topic "<topic>" say first?`` -> the first sentence of the topic's first
    prose paragraph) for the help topics (``pydoc_data.topics``) that have one."""
    out = []
    for topic, text in pydoc_topics().items():
        paragraphs = [p for p in text.split("\n\n")[1:] if p.strip() and not p.startswith((" ", "*", "="))]
        if not paragraphs:
            continue
        prose = " ".join(paragraphs[0].split())
        match = _SENTENCE.match(prose)
        answer = match.group(1) if match else prose
        out.append({"prompt": f'What does the help topic "{topic}" say first?', "response": answer})
    return out


TASKS: dict[str, Callable[[], list[Record]]] = {
    "numbers_fr": lambda: number_records("fr"),
    "numbers_de": lambda: number_records("de"),
    "docstring_summary": docstring_records,
    "help_qa": help_qa_records,
}


def build_task(name: str, seed: int = 0, val_fraction: float = 0.1) -> Splits:
    """The named task's records split into ``train`` / ``val`` / ``test`` (module docstring)."""
    if name not in TASKS:
        raise ConfigError(f"data.init_args.task={name!r} is not a task: use one of {', '.join(TASKS)}")
    return split_items(TASKS[name](), seed, val_fraction)
