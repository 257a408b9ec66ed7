"""Scores of generated text against one reference per example: exact match, chrF, BLEU, ROUGE-L.

Papers: Popović 2015 (chrF: character n-gram F-score, n = 1..6, beta = 2); Papineni et al. 2002
(BLEU: geometric mean of modified n-gram precisions, n = 1..4, times a brevity penalty); Post 2018
(sacreBLEU: BLEU on detokenised text with the ``13a`` tokenizer, the reported standard); Lin 2004
(ROUGE-L: F-measure of the longest common subsequence of words).

Every score is in [0, 1] (sacrebleu reports chrF and BLEU in [0, 100]: divide those by 100):
    ``exact_match``: the fraction of predictions equal to their reference after stripping leading
        and trailing whitespace;
    ``chrf``: corpus chrF as ``sacrebleu.corpus_chrf`` computes it by default (character n-grams
        without whitespace, statistics summed over the corpus, precision and recall averaged over
        the orders both sides have). Computed here, not with torchmetrics' ``CHRFScore``: torchmetrics
        1.9 leaves a sentence whose chrF is 0 (an empty or wholly wrong output) out of the corpus
        statistics, which would raise the score of a model that fails on some examples;
    ``bleu``: corpus BLEU of torchmetrics' ``SacreBLEUScore`` (``13a`` tokens, no smoothing), equal
        to ``sacrebleu.corpus_bleu(..., smooth_method="none")``: 0 when no 4-gram matches anywhere
        in the corpus (sacrebleu's default ``exp`` smoothing differs only then);
    ``rougeL``: the mean over examples of ROUGE-L's F-measure (torchmetrics' ``ROUGEScore``, as
        ``rouge_score.RougeScorer(["rougeL"])`` computes it: lower-cased alphanumeric words, no stemming).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lit_genai.errors import ConfigError

CHRF_ORDER = 6  # character n-grams 1..6 (Popović 2015; sacrebleu's default)
CHRF_BETA = 2.0  # recall weighs beta^2 = 4 times precision


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference up to surrounding whitespace."""
    _check(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )


def _char_ngrams(text: str, n: int) -> Counter:
    text = "".join(text.split())  # chrF ignores whitespace
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF in [0, 1], as ``sacrebleu.corpus_chrf(predictions, [references]).score / 100``."""
    _check(predictions, references)
    stats = [[0, 0, 0] for _ in range(CHRF_ORDER)]  # per order n: hypothesis, reference, matching n-grams
    for prediction, reference in zip(predictions, references, strict=True):
        for n in range(1, CHRF_ORDER + 1):
            hyp, ref = _char_ngrams(prediction, n), _char_ngrams(reference, n)
            stats[n - 1][0] += sum(hyp.values())
            stats[n - 1][1] += sum(ref.values())
            stats[n - 1][2] += sum((hyp & ref).values())  # clipped counts: min of the two
    # The orders with n-grams on both sides (sacrebleu's "effective order"): average P and R, then F.
    seen = [(match / hyp, match / ref) for hyp, ref, match in stats if hyp > 0 and ref > 0]
    if not seen:
        return 0.0
    precision = sum(p for p, _ in seen) / len(seen)
    recall = sum(r for _, r in seen) / len(seen)
    if precision + recall == 0:
        return 0.0
    factor = CHRF_BETA**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus sacreBLEU in [0, 1] (``13a`` tokens, no smoothing)."""
    from torchmetrics.text import (
        SacreBLEUScore,
    )  # imported on use: torchmetrics' text package is slow to load

    _check(predictions, references)
    return float(SacreBLEUScore(tokenize="13a")(list(predictions), [[r] for r in references]))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over the examples, in [0, 1]."""
    from torchmetrics.text import ROUGEScore

    _check(predictions, references)
    scores = ROUGEScore(rouge_keys="rougeL")(list(predictions), list(references))
    return float(scores["rougeL_fmeasure"])


def task_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """``{exact_match, chrf, bleu, rougeL}`` of the predictions against one reference each, in [0, 1]."""
    return {
        "exact_match": exact_match(predictions, references),
        "chrf": chrf(predictions, references),
        "bleu": bleu(predictions, references),
        "rougeL": rouge_l(predictions, references),
    }


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ConfigError("text task scores take lists of strings (one per example), not a single string")
    if len(predictions) != len(references) or not predictions:
        raise ConfigError(
            f"text task scores need one reference per prediction and at least one example: "
            f"got {len(predictions)} predictions and {len(references)} references"
        )
