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

from fedmoe.data.records import extract_gsm8k_answer, is_number

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, and collapse whitespace (SQuAD's rule)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the prediction matches the reference, else 0.0.

    A numeric reference (``"72"``, ``"1,200"``) or a GSM8K rationale ending in ``#### n`` is compared as a
    number against the number extracted from the prediction (``"... so she has 72 apples."`` matches
    ``72``); any other reference is compared as text after :func:`normalize_answer`.
    """
    if "####" in reference or is_number(reference):
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
