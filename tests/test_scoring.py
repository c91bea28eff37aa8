"""The paper's lenient scorers on hand-made generations."""

from __future__ import annotations

import pytest

from toolformer.evaluation.scoring import contains_answer, first_number, math_correct, normalize, score


@pytest.mark.parametrize("generation, gold, ok", [
    ("The answer is 1,234 apples.", 1234, True),
    ("She has 12 apples left", "12", True),
    ("12 - 5 = 7 apples remain", 7, True),          # the first number after "=" wins
    ("7 apples", 12, False),
    ("He paid $3.50 for it", 3.5, True),
    ("0.29", "0.29", True),
    ("It is 0.2857 of the total", "0.29", True),    # rounded to the gold's precision
    ("about -4 degrees", -4, True),
    ("no number here", 3, False),
    ("= 40 then 50", 50, False),
    ("x=12.0", 12, True),
])
def test_math_first_number_and_equals(generation, gold, ok):
    assert math_correct(generation, gold) is ok


def test_first_number_forms():
    assert first_number("costs 1,000,000 dollars") == 1_000_000
    assert first_number("ratio .5") == 0.5
    assert first_number("version2 has 3") == 3  # digits glued to a word are not a number
    assert first_number("") is None


def test_word_caps_and_aliases():
    gen = "He was born in the city of Honolulu, Hawaii in 1961 and later moved to Chicago"
    assert score("lama", gen, ["Honolulu"]) is False          # 7th word: past the 5-word cap
    assert score("qa", gen, ["Honolulu"]) is True             # within 20 words
    assert score("lama", "Honolulu, Hawaii.", ["Honolulu"]) is True
    assert score("qa", "It was Barack Obama.", ["Obama", "Barack Hussein Obama"]) is True   # an alias
    assert score("mlqa", "one two three four five six seven eight nine ten Paris", ["Paris"]) is False
    assert score("mlqa", "one two three four five six seven eight nine Paris", ["Paris"]) is True


def test_matching_is_on_whole_words_after_normalization():
    assert contains_answer("The Beatles!", ["beatles"], 5)
    assert not contains_answer("Parisian food", ["Paris"], 5)          # not a whole word
    assert contains_answer("“New York City” is big", ["new york city"], 5)
    assert contains_answer("an Apple", ["the apple"], 5)               # articles dropped on both sides
    assert not contains_answer("", ["x"], 5)
    assert normalize("  Hello,   World! ") == "hello world"


def test_unknown_task_kind_is_an_error():
    with pytest.raises(ValueError):
        score("trivia", "x", ["x"])
