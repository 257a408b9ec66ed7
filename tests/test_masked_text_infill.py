"""The readability count of benchmarks/masked_text_infill.py, which the README's masked-text number uses."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "masked_text_infill", Path(__file__).parents[1] / "benchmarks" / "masked_text_infill.py"
)
infill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(infill)


def test_each_run_of_holes_gives_the_words_it_became_with_the_letters_before_it():
    prompt = "The ____ statement is used to ______ a loop."
    assert infill.filled_words(prompt, "The with statement is used to the is a loop.") == [
        ["with"],
        ["the", "is"],
    ]
    assert infill.filled_words("all the cha_______", "all the characters") == [["characters"]]
    assert infill.filled_words("x = ____ y", "x =      y") == [[]]


def test_a_hole_is_readable_only_when_every_word_it_became_is_a_corpus_word():
    words = infill.corpus_words()
    assert {"with", "default", "__iter__"} <= words and "thew" not in words and "__" not in words
    assert infill.readable(["with"], words) and infill.readable(["__iter__"], words)
    assert not infill.readable(["thew"], words) and not infill.readable(["the", "thew"], words)
    assert not infill.readable([], words)  # blanks are not an infill
    assert not infill.readable(["___"], words)  # nor underscores alone
