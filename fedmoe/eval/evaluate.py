"""Batched evaluation of a causal LM on :class:`Example` records, each scored by its own metric.

Generation items (ROUGE-L, exact match) are decoded greedily in left-padded batches; exact-match answers
are single-line, so their decoding also stops at a newline. Multiple-choice items are scored by the
summed log-probability of each choice's tokens given the prompt; the argmax is the prediction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from fedmoe.data.collate import collate_prompts, pad_batch
from fedmoe.data.records import Example
from fedmoe.device import autocast_for
from fedmoe.eval.metrics import exact_match, rouge_l

_GENERATION_METRICS = {"rouge_l": rouge_l, "exact_match": exact_match}


def _newline_token_ids(tokenizer) -> list[int]:
    """Ids of every vocabulary token whose text contains a newline (stop tokens for one-line answers)."""
    return [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    stop_at_newline: bool = False,
    max_length: int = 512,
    progress: bool = False,
) -> list[str]:
    """Greedy completions of ``prompts`` (text after the prompt, cut at the first newline if asked)."""
    stop = [tokenizer.eos_token_id] + (_newline_token_ids(tokenizer) if stop_at_newline else [])
    outputs = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
        batch = {
            k: v.to(model.device)
            for k, v in collate_prompts(tokenizer, prompts[i : i + batch_size], max_length).items()
        }
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, batch["input_ids"].shape[1] :]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append((text.split("\n", 1)[0] if stop_at_newline else text).strip())
    return outputs


@torch.no_grad()
def choice_loglikelihoods(
    model, tokenizer, prompt: str, choices: Sequence[str], *, max_length: int = 512
) -> list[float]:
    """Sum of log p(choice tokens | prompt) for each choice (prompt and choice tokenised separately)."""
    return _score_pairs(
        model, tokenizer, [(prompt, c) for c in choices], batch_size=len(choices), max_length=max_length
    )


@torch.no_grad()
def _score_pairs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int,
    max_length: int,
    progress: bool = False,
) -> list[float]:
    scores = []
    for i in tqdm(range(0, len(pairs), batch_size), desc="score choices", disable=not progress):
        rows, starts = [], []
        for prompt, choice in pairs[i : i + batch_size]:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = tokenizer(choice, add_special_tokens=False)["input_ids"]
            if not c:
                raise ValueError(
                    f"choice {choice!r} tokenises to nothing; multiple-choice options must be non-empty"
                )
            p = p[max(0, len(p) - (max_length - len(c))) :]
            rows.append(p + c)
            starts.append(len(p))
        batch = {
            k: v.to(model.device) for k, v in pad_batch(rows, tokenizer.pad_token_id, side="right").items()
        }
        logp = model(**batch).logits.float().log_softmax(-1)
        for j, (row, start) in enumerate(zip(rows, starts, strict=True)):
            positions = torch.arange(max(start, 1), len(row), device=logp.device)
            targets = batch["input_ids"][j, positions]
            scores.append(float(logp[j, positions - 1, targets].sum()))
    return scores


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    max_length: int = 512,
    progress: bool = True,
) -> dict:
    """Score ``model`` on ``examples``: per-metric means, a combined ``score`` and per-domain scores.

    Returns ``{"score", "n", <metric>: mean for each metric present, "per_domain": {domain: score},
    "predictions": [text or chosen choice per example], "item_scores": [each example's own metric, in
    test-set order]}``; ``score`` is the mean of ``item_scores`` (in [0, 1]). Per-item scores let two
    methods be compared paired, on the same test items. Batches go to the model's device.
    """
    if not examples:
        raise ValueError("evaluate needs at least one example; got an empty list")
    was_training = model.training
    model.eval()
    per_example: list[float] = [0.0] * len(examples)
    predictions: list[str] = [""] * len(examples)
    try:
        with autocast_for(model):  # bf16 models run mixed precision; float32 ones as they are
            for metric, fn in _GENERATION_METRICS.items():
                idx = [i for i, ex in enumerate(examples) if ex.metric == metric]
                if not idx:
                    continue
                texts = generate(
                    model,
                    tokenizer,
                    [examples[i].prompt for i in idx],
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    stop_at_newline=metric == "exact_match",
                    max_length=max_length,
                    progress=progress,
                )
                for i, text in zip(idx, texts, strict=True):
                    predictions[i] = text
                    per_example[i] = fn(text, examples[i].answer)
            idx = [i for i, ex in enumerate(examples) if ex.metric == "mc_accuracy"]
            pairs = [(examples[i].prompt, c) for i in idx for c in examples[i].choices]
            flat = (
                _score_pairs(
                    model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, progress=progress
                )
                if pairs
                else []
            )
            offset = 0
            for i in idx:
                n = len(examples[i].choices)
                scores = flat[offset : offset + n]
                offset += n
                pick = scores.index(max(scores))  # ties: first choice, as metrics.mc_accuracy
                predictions[i] = examples[i].choices[pick]
                per_example[i] = float(pick == examples[i].label)
    finally:
        model.train(was_training)
    by_metric, by_domain = defaultdict(list), defaultdict(list)
    for ex, value in zip(examples, per_example, strict=True):
        by_metric[ex.metric].append(value)
        by_domain[ex.domain].append(value)
    result = {"score": sum(per_example) / len(per_example), "n": len(examples)}
    result.update({m: sum(v) / len(v) for m, v in by_metric.items()})
    result["per_domain"] = {d: sum(v) / len(v) for d, v in sorted(by_domain.items())}
    result["predictions"] = predictions
    result["item_scores"] = list(per_example)
    return result
