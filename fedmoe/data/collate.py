"""Turn :class:`Example` records into token batches for supervised fine-tuning and scoring.

The prompt and the target are tokenised separately and concatenated, so the model is trained on exactly
the token sequence it later conditions on (``prompt ids``) and produces (``target ids`` + eos). The loss
is on the target and eos only (prompt and padding labels are -100).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmoe.data.records import Example

IGNORE_INDEX = -100


def _check_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens; set tokenizer.pad_token (e.g. to eos_token)")


def encode_example(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example: prompt + target + eos, labels -100 on the prompt.

    Over ``max_length``, the prompt is cut from the left (its end, next to the answer, is kept); a target
    longer than ``max_length`` itself is cut from the right.
    """
    _check_tokenizer(tokenizer)
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    target = target[:max_length]
    prompt = prompt[max(0, len(prompt) - (max_length - len(target))):] if max_length > len(target) else []
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "right",
              label_rows: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad token rows to one length on ``side`` ("right" for training, "left" for generation).

    Returns ``input_ids`` and ``attention_mask`` (and ``labels``, padded with -100, when given).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r}; use 'left' or 'right'")
    if not rows:
        raise ValueError("cannot pad an empty batch; pass at least one row")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long) if label_rows is not None else None
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
        if labels is not None:
            labels[i, span] = torch.tensor(label_rows[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = labels
    return out


def collate_train(tokenizer, examples: Sequence[Example], max_length: int = 256) -> dict[str, torch.Tensor]:
    """A right-padded training batch: ``input_ids``, ``attention_mask`` and ``labels`` (answer + eos only)."""
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    return pad_batch([e[0] for e in encoded], tokenizer.pad_token_id, side="right",
                     label_rows=[e[1] for e in encoded])


def collate_prompts(tokenizer, prompts: Sequence[str], max_length: int = 256) -> dict[str, torch.Tensor]:
    """A left-padded batch of prompts for generation, each cut to its last ``max_length`` tokens."""
    _check_tokenizer(tokenizer)
    rows = [ids[-max_length:] for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    return pad_batch(rows, tokenizer.pad_token_id, side="left")
