"""Text task scores (lit_genai.metrics.text_tasks) agree with the reference implementations:
sacrebleu's corpus_chrf / corpus_bleu (which report 0-100: divided by 100 here) and rouge-score's
RougeScorer(["rougeL"]) averaged over the examples."""

import statistics

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lit_genai.errors import ConfigError
from lit_genai.metrics.text_tasks import chrf, exact_match, task_scores

PREDICTIONS = [
    "the cat sat on the mat",
    "a quick brown fox",
    "",  # an empty output still counts (its reference's n-grams are all missed)
    "Hello, world!  ",
    "two hundred and five",
    "zzz",  # wholly wrong: chrF 0 on its own
    "Die Katze sitzt auf der Matte.",
]
REFERENCES = [
    "the cat is on the mat",
    "the quick brown fox jumps",
    "nothing here",
    "Hello, world!",
    "two hundred five",
    "qqq",
    "Die Katze saß auf der Matte.",
]


def rouge_l_reference(predictions, references) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return statistics.mean(
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    )


def test_the_scores_agree_with_sacrebleu_and_rouge_score():
    scores = task_scores(PREDICTIONS, REFERENCES)
    assert set(scores) == {"exact_match", "chrf", "bleu", "rougeL"}
    assert scores["exact_match"] == 1 / 7  # "Hello, world!  " up to whitespace, nothing else
    # chrF: computed here in float64, to 1e-9 of sacrebleu's
    assert scores["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score / 100, abs=1e-9
    )
    # BLEU and ROUGE-L come from torchmetrics in float32: 1e-6
    expected_bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], smooth_method="none").score / 100
    assert scores["bleu"] == pytest.approx(expected_bleu, abs=1e-6)
    assert 0.3 < scores["bleu"] < 0.5  # not a degenerate 0 or 1
    assert scores["rougeL"] == pytest.approx(rouge_l_reference(PREDICTIONS, REFERENCES), abs=1e-6)


@pytest.mark.parametrize("count", [1, 3])
def test_chrf_matches_sacrebleu_on_subsets_including_empty_and_wrong_outputs(count):
    for start in range(len(PREDICTIONS) - count + 1):
        p, r = PREDICTIONS[start : start + count], REFERENCES[start : start + count]
        assert chrf(p, r) == pytest.approx(sacrebleu.corpus_chrf(p, [r]).score / 100, abs=1e-9), (p, r)


def test_perfect_and_hopeless_outputs_score_one_and_zero():
    perfect = task_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect == pytest.approx({"exact_match": 1.0, "chrf": 1.0, "bleu": 1.0, "rougeL": 1.0})
    assert task_scores([""], ["anything at all"]) == {
        "exact_match": 0.0,
        "chrf": 0.0,
        "bleu": 0.0,
        "rougeL": 0.0,
    }
    # Answers shorter than 4 words have no 4-grams: unsmoothed BLEU is 0 (as sacrebleu's "none")
    assert (
        task_scores(["a b"], ["a b"])["bleu"]
        == 0.0
        == sacrebleu.corpus_bleu(["a b"], [["a b"]], smooth_method="none").score
    )


def test_mismatched_or_bare_string_inputs_are_one_line():
    assert exact_match([" 42\n"], ["42"]) == 1.0
    with pytest.raises(ConfigError, match="got 2 predictions and 1 references"):
        task_scores(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="not a single string"):
        task_scores("abc", "abc")
