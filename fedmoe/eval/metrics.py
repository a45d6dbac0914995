"""The papers' evaluation metrics as pure functions of predictions and references.

- ``exact_match``: SQuAD-style normalised string match; GSM8K-style numeric match when the reference
  is a number or a ``... #### n`` rationale.
- ``rouge_l``: ROUGE-L F-measure with Porter stemming (rouge-score), as Dolly evaluations report it.
- ``accuracy`` / ``mc_accuracy``: classification accuracy, and multiple-choice accuracy from the
  per-choice log-likelihoods (argmax, first choice wins ties).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache

from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
# A number as GSM8K writes it: optional sign and dollar sign, thousands commas, decimals.
_NUMBER = re.compile(r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, and collapse whitespace (SQuAD's rule)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _canonical_number(token: str) -> str:
    """``"$1,234.50"`` -> ``"1234.5"``; integral values lose their decimals (``"72.00"`` -> ``"72"``)."""
    value = Decimal(token.replace(",", "").replace("$", ""))
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_answer(s: str) -> str | None:
    """The final numeric answer of a GSM8K-style text, canonicalised, or ``None`` if there is none.

    The first number after the last ``####`` marker when there is one, else the last number in the
    text; thousands commas and ``$`` are stripped (``"#### 1,200"`` -> ``"1200"``).
    """
    if "####" in s:
        numbers = _NUMBER.findall(s.rsplit("####", 1)[1])
        return _canonical_number(numbers[0]) if numbers else None
    numbers = _NUMBER.findall(s)
    return _canonical_number(numbers[-1]) if numbers else None


def _is_numeric(s: str) -> bool:
    return _NUMBER.fullmatch(s.strip()) is not None


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the prediction matches the reference, else 0.0.

    A numeric reference (``"72"``, ``"1,200"``) or a GSM8K rationale ending in ``#### n`` is compared as a
    number against the number extracted from the prediction (``"... so she has 72 apples."`` matches
    ``72``); any other reference is compared as text after :func:`normalize_answer`.
    """
    if "####" in reference or _is_numeric(reference):
        ref = extract_gsm8k_answer(reference)
        pred = extract_gsm8k_answer(prediction)
        return float(ref is not None and pred is not None and Decimal(ref) == Decimal(pred))
    return float(normalize_answer(prediction) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of the prediction against the reference (rouge-score, Porter stemming).

    Tokens are lowercased alphanumeric words; F = 2PR / (P + R) with P = LCS / |prediction| and
    R = LCS / |reference|. 0.0 when either side has no tokens.
    """
    return _rouge_l_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure


def _check_lengths(what: str, predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(
            f"{what}: got {len(predictions)} predictions but {len(labels)} labels; pass one each"
        )
    if not labels:
        raise ValueError(f"{what}: no examples to score; pass at least one prediction and label")


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of positions where the prediction equals the label."""
    _check_lengths("accuracy", predictions, labels)
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def mc_accuracy(choice_loglikelihoods: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Multiple-choice accuracy: the predicted choice is the one with the highest log-likelihood.

    ``choice_loglikelihoods[i][j]`` scores choice ``j`` of question ``i``; ties go to the first choice.
    """
    _check_lengths("mc_accuracy", choice_loglikelihoods, labels)
    predictions = []
    for i, scores in enumerate(choice_loglikelihoods):
        scores = list(scores)
        if not scores:
            raise ValueError(f"mc_accuracy: question {i} has no choice scores; pass one score per choice")
        predictions.append(scores.index(max(scores)))
    return accuracy(predictions, labels)
