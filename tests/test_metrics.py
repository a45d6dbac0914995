"""Metrics against values computed by hand (LCS tables, SQuAD normalisation, GSM8K final numbers)."""

import pytest

from fedmoe.eval import accuracy, exact_match, extract_gsm8k_answer, mc_accuracy, normalize_answer, rouge_l


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Quick, brown FOX!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("  theater   (A-Z)  ", "theater az"),  # "the" inside a word is not an article
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72 altogether.\n#### 72",
            "72",
        ),
        ("It costs 5 per hour, so 240 * 5 = 1200.\n#### 1,200", "1200"),
        ("first 3 then 4 #### $18 and later 99", "18"),  # the first number after the marker
        ("The answer is 7.50 dollars, not 3.", "3"),  # no marker: the last number
        ("He pays $1,234.50 in total", "1234.5"),
        ("#### -3", "-3"),
        ("#### 72.00", "72"),
        ("no digits here", None),
        ("#### nothing after the marker", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("72", "Natalia sold 24 clips in May.\n#### 72", 1.0),
        ("So she sold 72 clips.", "#### 72", 1.0),
        ("73", "#### 72", 0.0),
        ("The total is 1,200", "1200", 1.0),
        ("72.0", "72", 1.0),
        ("I cannot tell", "72", 0.0),
        ("the Eiffel Tower.", "Eiffel  tower", 1.0),
        ("Paris", "London", 0.0),
        ("tower eiffel", "Eiffel Tower", 0.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS(the cat lay on a mat | the cat sat on the mat) = the,cat,on,mat = 4; P = R = 4/6 -> F = 2/3
        ("the cat lay on a mat", "the cat sat on the mat", 2 / 3),
        # LCS = 2 (police killed | the gunman); P = R = 2/4 -> F = 1/2
        ("police killed the gunman", "the gunman police killed", 1 / 2),
        # LCS = 2; P = 2/2, R = 2/6 -> F = 2 * 1 * (1/3) / (4/3) = 1/2
        ("The cat.", "the cat sat on the mat", 1 / 2),
        # with Porter stemming: [a, cat, run] vs [the, cat, are, run]; LCS = 2, P = 2/3, R = 2/4 -> F = 4/7
        ("a cat runs", "the cats are running", 4 / 7),
        ("identical words here", "Identical words, here!", 1.0),
        ("nothing shared", "completely different", 0.0),
        ("", "the reference", 0.0),
    ],
)
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_accuracy():
    assert accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert accuracy(["a"], ["a"]) == 1.0
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_mc_accuracy_argmax_and_ties():
    scores = [[-1.0, -2.0], [-3.0, -0.5, -4.0], [-1.0, -1.0]]  # argmax: 0, 1, 0 (tie -> first)
    assert mc_accuracy(scores, [0, 1, 0]) == 1.0
    assert mc_accuracy(scores, [0, 1, 1]) == pytest.approx(2 / 3)
    assert mc_accuracy(scores, [1, 0, 1]) == 0.0
    with pytest.raises(ValueError, match="question 1 has no choice scores"):
        mc_accuracy([[0.0], []], [0, 0])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        mc_accuracy([[0.0], [0.0]], [0])
