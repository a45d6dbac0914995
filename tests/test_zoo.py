"""The zoo: tokenizer round-trip, deterministic pretraining, cache hits, specialisation measures."""

import dataclasses

import pytest
import torch

from fedmoe.data.offline import pretraining_corpus
from fedmoe.moe import zoo

TINY = dataclasses.replace(zoo.SCALES["smoke"], steps=4, n_docs=200, vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.train_tokenizer(pretraining_corpus(0, 200), 300)


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for text in ["The capital of Zorvia is Quenbar.", "### Response:\n7 + 5 = 12 #### 12", "ünïcödé ✓"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == " " + text  # byte-level BPE with one prefix space
    # a word tokenises the same at the start of a text as mid-sentence (what answers rely on)
    alone = tokenizer("Quenbar", add_special_tokens=False)["input_ids"]
    inside = tokenizer("is Quenbar", add_special_tokens=False)["input_ids"]
    assert inside[-len(alone):] == alone


def test_pretraining_is_deterministic_and_learns():
    m1, _, info1 = zoo.pretrain("tiny-mixtral", TINY, seed=0, progress=False)
    m2, _, info2 = zoo.pretrain("tiny-mixtral", TINY, seed=0, progress=False)
    assert info1["losses"] == info2["losses"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert info1["losses"][-1] < info1["losses"][0]


def test_cache_hit_reloads_identical_weights(tmp_path, monkeypatch):
    m1, tok1 = zoo.load_pretrained("tiny-olmoe", TINY, seed=1, cache_dir=tmp_path, progress=False)
    assert type(m1).__name__ == "OlmoeForCausalLM"
    monkeypatch.setattr(zoo, "pretrain", lambda *a, **k: pytest.fail("cache miss: pretrained again"))
    m2, tok2 = zoo.load_pretrained("tiny-olmoe", TINY, seed=1, cache_dir=tmp_path, progress=False)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert tok1.get_vocab() == tok2.get_vocab()
    monkeypatch.setenv("FEDMOE_CACHE", str(tmp_path))
    assert zoo.default_cache_dir() == tmp_path
    zoo.load_pretrained("tiny-olmoe", TINY, seed=1, progress=False)  # env-selected cache: still a hit


def test_cache_key_depends_on_everything_that_determines_the_model():
    keys = {zoo.cache_key("tiny-mixtral", "smoke", 0), zoo.cache_key("tiny-mixtral", "smoke", 1),
            zoo.cache_key("tiny-olmoe", "smoke", 0), zoo.cache_key("tiny-mixtral", "default", 0),
            zoo.cache_key("tiny-mixtral", dataclasses.replace(zoo.SCALES["smoke"], lr=1e-3), 0)}
    assert len(keys) == 5


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.load_pretrained("gpt-5", "smoke")
    with pytest.raises(ValueError, match="unknown zoo scale"):
        zoo.cache_key("tiny-mixtral", "huge")


def test_specialisation_measures(tokenizer):
    model, tok, _ = zoo.pretrain("tiny-mixtral", TINY, seed=0, progress=False)
    before = [p.detach().clone() for p in model.parameters()]
    spec = zoo.specialisation(model, tok, 0, n_docs=120, seq_len=32)
    assert set(spec["per_domain"]) == {"geography", "animals", "people", "materials", "arithmetic", "sequences"}
    own = sum(v["increase_own"] for v in spec["per_domain"].values()) / 6
    assert spec["increase_own"] == pytest.approx(own)
    assert spec["ratio"] == pytest.approx(spec["increase_own"] / spec["increase_other"])
    assert 0 <= spec["jsd"] <= 0.7 and 0 <= spec["jsd_random"] <= 0.7  # JSD is bounded by ln 2
    for a, b in zip(before, model.parameters(), strict=True):  # removed experts are restored
        assert torch.equal(a, b)


def test_pretraining_ignores_the_callers_thread_count():
    """The cached model must not depend on torch's thread count (it did: a notebook that pretrained
    on the default two threads got weights different in the last bits from the one-thread script)."""
    import torch

    from fedmoe.moe.zoo import pretrain

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two, _, _ = pretrain("tiny-mixtral", "smoke", 0, progress=False)
        assert torch.get_num_threads() == 2  # restored for the caller
        torch.set_num_threads(1)
        one, _, _ = pretrain("tiny-mixtral", "smoke", 0, progress=False)
    finally:
        torch.set_num_threads(before)
    for (name, a), (_, b) in zip(two.state_dict().items(), one.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
