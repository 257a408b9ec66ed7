"""Infill quality of a masked text model: how often a hole becomes words of the corpus.

What it measures
    For each ``lit-genai fit`` checkpoint of ``lit_genai.masked.MaskedTokens`` trained on the help
    topics (``experiments/masked/text.yaml``) and each decoding setting (steps, choice temperature,
    sampling temperature), ``--samples`` infills of each of ``PROMPTS`` (``_`` = a hole, one
    character each), seeds 0 .. samples - 1. A hole counts as readable when the letters it became,
    joined to the word it sits in, are words that occur in the corpus (e.g. "with" or "__name__";
    an empty fill or a non-word such as "thew" is not). It prints, per checkpoint and setting, the
    share of readable holes, and the first three infills of every prompt.

    It says nothing about whether the word is the right one (the prompts have several good
    answers); it separates "spells words" from "character soup", which is what these small
    character models get wrong first.

How to run
    OMP_NUM_THREADS=1 python benchmarks/masked_text_infill.py runs/masked-text/checkpoints/last.ckpt
    # several checkpoints and the settings to compare:
    python benchmarks/masked_text_infill.py A.ckpt B.ckpt --settings 16,4.5,0.8 64,1.0,0.3
"""

from __future__ import annotations

import argparse
import re

import torch

from lit_genai import paradigm
from lit_genai.data.text_sources import pydoc_topics_text
from lit_genai.masked import MaskedTokens

PROMPTS = (
    "The ____ statement is used to ______ a loop.",
    'The "_____" statement is used for ________ execution as long as',
    "Return a copy of the string with all ___ characters converted",
    'If the index is out of range, "__________" is raised.',
    "The default value is ____ if the argument is omitted.",
)


def corpus_words() -> set[str]:
    """The words of the help topics the model trained on (letters and underscores, at least one letter)."""
    text = pydoc_topics_text()
    return {w for w in re.findall(r"[A-Za-z_]+", text) if w.strip("_")}


def filled_words(prompt: str, text: str) -> list[list[str]]:
    """For each run of holes in ``prompt``, the words ``text`` has there, with the letters before it."""
    spans = []
    for hole in re.finditer(r"_+", prompt):
        start, end = hole.span()
        while start > 0 and prompt[start - 1].isalpha():  # a hole inside a word: the whole word
            start -= 1
        spans.append(re.findall(r"[A-Za-z_]+", text[start:end]))
    return spans


def readable(words: list[str], vocabulary: set[str]) -> bool:
    return (
        bool(words)
        and all(w.strip("_") == "" or w in vocabulary for w in words)
        and any(w.strip("_") for w in words)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["16,4.5,0.8", "32,2.0,0.5", "64,1.0,0.3", "64,0,0"],
        help="STEPS,CHOICE_TEMPERATURE,TEMPERATURE entries",
    )
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocabulary = corpus_words()
    for ckpt in args.ckpts:
        model = MaskedTokens.load_from_checkpoint(ckpt, map_location="cpu").eval()
        chars = model.vocabulary
        for setting in args.settings:
            steps, tau, temperature = setting.split(",")
            good = total = 0
            examples = []
            for prompt in PROMPTS:
                ids = model.sample(
                    args.samples,
                    prompt=prompt,
                    steps=int(steps),
                    choice_temperature=float(tau),
                    temperature=float(temperature),
                    generator=paradigm.sample_generators(0, range(args.samples)),
                )  # (samples, block_size)
                texts = ["".join(chars[i] for i in row.tolist()[: len(prompt)]) for row in ids]
                examples.append(texts[:3])
                for text in texts:
                    for words in filled_words(prompt, text):
                        good += readable(words, vocabulary)
                        total += 1
            print(
                f"{ckpt}  steps {steps}, choice temperature {tau}, temperature {temperature}: "
                f"{good}/{total} = {good / total:.2f} of the holes became corpus words"
            )
            for texts in examples:
                print("    " + " | ".join(texts))


if __name__ == "__main__":
    main()
