"""Collation (loss on answer tokens only) and the fine-tuning loop."""

import pytest
import torch

from fedmoe.data.collate import IGNORE_INDEX, collate_train, encode_example
from fedmoe.data.offline import make_benchmark, pretraining_corpus
from fedmoe.data.records import Example
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.zoo import train_tokenizer
from fedmoe.train import TrainConfig, finetune


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(pretraining_corpus(0, 200), 300)


@pytest.fixture(scope="module")
def examples():
    return make_benchmark("gsm", n_train=32, n_test=0, seed=0)[0]


def test_loss_only_on_answer_and_eos(tokenizer):
    ex = Example(prompt="### Instruction:\nHi\n\n### Response:\n", answer="7 + 5 = 12")
    ids, labels = encode_example(tokenizer, ex, max_length=64)
    p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    assert ids == p + a + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(p) + a + [tokenizer.eos_token_id]
    # truncation cuts the prompt from the left and keeps the whole answer
    ids, labels = encode_example(tokenizer, ex, max_length=len(a) + 3)
    assert ids == p[-2:] + a + [tokenizer.eos_token_id] and labels[:2] == [IGNORE_INDEX] * 2


def test_collate_right_pads(tokenizer, examples):
    batch = collate_train(tokenizer, examples[:4], max_length=64)
    lengths = batch["attention_mask"].sum(1)
    for i in range(4):
        n = int(lengths[i])
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["labels"][i, n - 1] == tokenizer.eos_token_id


def test_finetune_lowers_loss_and_is_deterministic(tiny_moe, tokenizer, examples):
    cfg = TrainConfig(lr=3e-3, batch_size=8, steps=12, seed=0)
    runs = []
    for _ in range(2):
        model = tiny_moe("mixtral", vocab_size=len(tokenizer))
        stats = finetune(model, tokenizer, examples, cfg, progress=False)
        runs.append((model, stats))
    (m1, s1), (m2, s2) = runs
    assert s1.losses == s2.losses
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    assert sum(s1.losses[-3:]) / 3 < sum(s1.losses[:3]) / 3
    assert s1.steps == 12 and s1.examples == 96
    # every non-padding token is routed to top_k experts in each of the 2 MoE layers
    assert s1.expert_counts.shape == (2, 8)
    assert (s1.expert_counts.sum(1) == 2 * s1.tokens).all()
    assert s1.target_tokens < s1.tokens


def test_params_restrict_what_is_trained(tiny_moe, tokenizer, examples):
    model = tiny_moe("olmoe", vocab_size=len(tokenizer))
    router = [p for n, p in model.named_parameters() if "mlp.gate.weight" in n]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetune(model, tokenizer, examples, TrainConfig(steps=2, batch_size=4), params=router, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != ("mlp.gate.weight" in n), n
        assert p.requires_grad  # flags restored


def test_param_groups_train_at_their_own_lr_outside_clipping(tiny_moe, tokenizer, examples):
    model = tiny_moe("olmoe", vocab_size=len(tokenizer))
    router = [p for n, p in model.named_parameters() if "mlp.gate.weight" in n]
    before = [p.detach().clone() for p in router]
    gain = torch.nn.Parameter(torch.zeros(1))  # scales MoE layer 0's output by exp(gain)
    handle = moe_layers(model)[0].block.register_forward_hook(lambda _m, _i, out: out * gain.exp())
    cfg = TrainConfig(lr=1e-3, steps=1, batch_size=4, grad_clip=1e-9)
    finetune(model, tokenizer, examples, cfg, params=router, param_groups=[{"params": [gain], "lr": 0.1}],
             progress=False)
    handle.remove()
    # Adam's first step is lr * g / (|g| + 1e-8): a gradient clipped to norm 1e-9 moves < lr / 10
    assert abs(float(gain.detach())) == pytest.approx(0.1, rel=1e-3)  # its own lr, not clipped
    assert max(float((p - b).abs().max()) for p, b in zip(router, before, strict=True)) < 1e-4  # clipped


def test_epochs_and_bad_config(tokenizer, examples, tiny_moe):
    assert TrainConfig(batch_size=8, epochs=1.5).total_steps(32) == 6
    with pytest.raises(ValueError, match="schedule"):
        finetune(tiny_moe("mixtral"), tokenizer, examples, TrainConfig(schedule="step"), progress=False)
    with pytest.raises(ValueError, match="at least one example"):
        finetune(tiny_moe("mixtral"), tokenizer, [], progress=False)


def test_extra_loss_joins_the_backward_but_not_the_reported_loss(tiny_moe, tokenizer, examples):
    cfg = TrainConfig(lr=1e-2, batch_size=4, steps=3, seed=0)
    seen = []

    def pull_lm_head_to_zero(model, batch):
        seen.append(batch["attention_mask"].shape[0])
        return 1e3 * model.lm_head.weight.square().sum()

    plain, pulled = tiny_moe("olmoe", vocab_size=len(tokenizer)), tiny_moe("olmoe", vocab_size=len(tokenizer))
    s_plain = finetune(plain, tokenizer, examples, cfg, progress=False)
    s_pulled = finetune(pulled, tokenizer, examples, cfg, progress=False, extra_loss=pull_lm_head_to_zero)
    assert seen == [4, 4, 4]
    assert s_pulled.losses[0] == s_plain.losses[0]  # reported: the LM loss of the same first batch
    assert pulled.lm_head.weight.norm() < plain.lm_head.weight.norm()
