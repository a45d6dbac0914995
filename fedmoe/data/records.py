"""The one record every dataset is converted to, whatever its source schema.

A record is either a *generation* item (prompt -> reference answer, scored by ROUGE-L or exact
match) or a *multiple-choice* item (prompt + choices, scored by log-likelihood accuracy). A numeric answer
is read as GSM8K writes it (:func:`extract_gsm8k_answer`), both when a dataset is converted and when exact match
scores a prediction.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal

METRICS = ("rouge_l", "exact_match", "mc_accuracy")

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
PROMPT_TEMPLATE_WITH_CONTEXT = "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
# A number as GSM8K writes it: optional sign and dollar sign, thousands commas, decimals.
_NUMBER = re.compile(r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")


def format_prompt(instruction: str, context: str | None = None) -> str:
    """Format an instruction (and optional input/context) in the kit's Alpaca-style prompt template.

    Every dataset, offline or real, uses this template so that models, metrics and plots compare alike.
    """
    if context:
        return PROMPT_TEMPLATE_WITH_CONTEXT.format(instruction=instruction.strip(), context=context.strip())
    return PROMPT_TEMPLATE.format(instruction=instruction.strip())


@dataclass(frozen=True)
class Example:
    """One instruction example in the kit's common format.

    Attributes:
        prompt: the full text the model is conditioned on (already formatted as an instruction).
        answer: reference completion for generation metrics; for multiple choice, the correct choice text.
        choices: candidate completions for multiple choice, else ``None``.
        label: index of the correct choice for multiple choice, else ``None``.
        domain: domain or category name, used for non-IID partitioning and per-domain scores.
        metric: how the example is scored: one of ``METRICS``.
    """

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None
    label: int | None = None
    domain: str = "general"
    metric: str = "rouge_l"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {METRICS}")
        if self.metric == "mc_accuracy":
            if not self.choices or self.label is None or not 0 <= self.label < len(self.choices):
                raise ValueError("a multiple-choice Example needs `choices` and a `label` indexing into them")
            if self.choices[self.label] != self.answer:
                raise ValueError("for multiple choice, `answer` must equal choices[label]")

    @property
    def target(self) -> str:
        """The completion trained on: the answer text (the correct choice for multiple choice)."""
        return self.answer

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (choices as a list)."""
        d = asdict(self)
        if d["choices"] is not None:
            d["choices"] = list(d["choices"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if d.get("choices") is not None:
            d["choices"] = tuple(d["choices"])
        return cls(**d)


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


def is_number(s: str) -> bool:
    """Whether ``s`` (stripped) is one number as GSM8K writes it (``"72"``, ``"$1,200.50"``)."""
    return _NUMBER.fullmatch(s.strip()) is not None
