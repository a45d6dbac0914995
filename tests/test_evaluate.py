"""Batched evaluation against hand-computed values on a tiny random model."""

import pytest
import torch

from fedmoe.data.offline import pretraining_corpus
from fedmoe.data.records import Example, format_prompt
from fedmoe.eval.evaluate import choice_loglikelihoods, evaluate, generate
from fedmoe.eval.metrics import exact_match, rouge_l
from fedmoe.moe.zoo import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(pretraining_corpus(0, 200), 300)


@pytest.fixture
def model(tiny_moe, tokenizer):
    return tiny_moe("mixtral", vocab_size=len(tokenizer), seed=3)


def _manual_loglik(model, tokenizer, prompt, choice):
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
    return sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(c))


def test_choice_loglikelihoods_match_hand_computation(model, tokenizer):
    prompt = format_prompt("What is the capital of Zorvia?")
    choices = ["Quenbar", "Ravgrad", "Hesheim the great"]
    got = choice_loglikelihoods(model, tokenizer, prompt, choices)
    want = [_manual_loglik(model, tokenizer, prompt, c) for c in choices]
    assert got == pytest.approx(want, abs=1e-4)


def test_mc_accuracy_picks_the_highest_loglikelihood(model, tokenizer):
    examples = []
    for i, q in enumerate(["What colour is the wobet?", "What is 7 plus 5?", "Where does the drakox live?"]):
        choices = ("red", "12", "ocean", "green tea")
        prompt = format_prompt(q)
        scores = [_manual_loglik(model, tokenizer, prompt, c) for c in choices]
        best = scores.index(max(scores))
        label = (best + i) % 4  # label the best choice correct for the first question only
        examples.append(Example(prompt, choices[label], choices=choices, label=label, domain=f"d{i}",
                                metric="mc_accuracy"))
        if i == 0:
            assert label == best
    result = evaluate(model, tokenizer, examples, batch_size=5, progress=False)
    assert result["per_domain"] == {"d0": 1.0, "d1": 0.0, "d2": 0.0}
    assert result["mc_accuracy"] == pytest.approx(1 / 3) == result["score"]
    assert result["item_scores"] == [1.0, 0.0, 0.0]  # each question's own score, in test-set order


def test_batched_left_padded_generation_equals_one_by_one(model, tokenizer):
    prompts = [format_prompt("Hi"), format_prompt("What is the capital of Zorvia, the big country?"),
               format_prompt("Describe the pattern of the sequence 1, 2, 3, 4.")]
    batched = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=6)
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all("\n" not in t for t in generate(model, tokenizer, prompts, max_new_tokens=12, stop_at_newline=True))


def test_generation_scores_are_the_metric_of_each_prediction(model, tokenizer):
    examples = [Example(format_prompt("Add 2 and 3."), "2 + 3 = 5 #### 5", domain="math", metric="exact_match"),
                Example(format_prompt("Name a colour."), "red", domain="words", metric="exact_match"),
                Example(format_prompt("Describe the wobet."), "The wobet is a red animal.", domain="words")]
    result = evaluate(model, tokenizer, examples, max_new_tokens=8, progress=False)
    preds = result["predictions"]
    per = [exact_match(preds[0], examples[0].answer), exact_match(preds[1], examples[1].answer),
           rouge_l(preds[2], examples[2].answer)]
    assert result["score"] == pytest.approx(sum(per) / 3)
    assert result["exact_match"] == pytest.approx((per[0] + per[1]) / 2)
    assert result["rouge_l"] == pytest.approx(per[2])
    assert result["per_domain"]["words"] == pytest.approx((per[1] + per[2]) / 2)
    assert result["n"] == 3 and not model.training
