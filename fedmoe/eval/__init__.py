"""Evaluation: the papers' metrics (accuracy, exact match, ROUGE-L, multiple-choice log-likelihood)."""

from fedmoe.eval.evaluate import evaluate
from fedmoe.eval.metrics import (
    accuracy,
    exact_match,
    extract_gsm8k_answer,
    mc_accuracy,
    normalize_answer,
    rouge_l,
)

__all__ = [
    "accuracy",
    "evaluate",
    "exact_match",
    "extract_gsm8k_answer",
    "mc_accuracy",
    "normalize_answer",
    "rouge_l",
]
