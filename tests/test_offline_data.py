"""The offline world: deterministic, train/test disjoint, every test fact present in the pretraining corpus."""

import re

import pytest

from fedmoe.data.offline import DOMAINS, SUITE_METRIC, SUITES, corpus_documents, make_benchmark, make_world
from fedmoe.data.records import format_prompt


def test_benchmark_is_deterministic_and_seed_dependent():
    a = make_benchmark("gsm", n_train=60, n_test=30, seed=0)
    b = make_benchmark("gsm", n_train=60, n_test=30, seed=0)
    c = make_benchmark("gsm", n_train=60, n_test=30, seed=1)
    assert a == b
    assert a != c
    assert corpus_documents(0, 50) == corpus_documents(0, 50)


@pytest.mark.parametrize("suite", SUITES)
def test_suites_span_domains_with_their_metric(suite):
    train, test = make_benchmark(suite, n_train=60, n_test=24, seed=0)
    assert len(train) == 60 and len(test) == 24
    assert {ex.domain for ex in train} == set(DOMAINS) == {ex.domain for ex in test}
    assert {ex.metric for ex in train + test} == {SUITE_METRIC[suite]}
    assert all(ex.prompt.startswith("### Instruction:\n") and ex.prompt.endswith("### Response:\n")
               for ex in train + test)
    if suite == "mmlu":
        assert all(len(ex.choices) == 4 and len(set(ex.choices)) == 4 for ex in test)


def test_train_and_test_are_about_disjoint_entities():
    world = make_world(0)
    for domain in DOMAINS:
        train_keys, test_keys = world.split[domain]
        assert train_keys and test_keys and not set(train_keys) & set(test_keys)
    train, test = make_benchmark("gsm", n_train=600, n_test=200, seed=0)
    names = [k for d in ("geography", "animals", "people", "materials") for k in world.split[d][1]]
    train_text = " ".join(ex.prompt for ex in train)
    for name in names:  # no held-out entity is ever named in a fine-tuning prompt
        assert re.search(rf"\b{re.escape(name)}\b", train_text) is None, name


def test_arithmetic_answers_are_correct_and_gsm8k_shaped():
    _, test = make_benchmark("gsm", n_train=0, n_test=120, seed=3)
    for ex in test:
        if ex.domain in ("arithmetic", "sequences"):
            m = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+) #### (\d+)", ex.answer)
            assert m, ex.answer
            a, op, b, c, final = m.groups()
            assert int(c) == int(final) == eval(f"{a}{op}{b}")
            if ex.domain == "arithmetic":  # both operands are stated in the word problem
                assert re.search(rf"\b{a}\b", ex.prompt) and re.search(rf"\b{b}\b", ex.prompt)


def test_every_test_fact_is_stated_in_the_pretraining_corpus():
    world = make_world(0)
    corpus = " ".join(text for _, text in corpus_documents(0, 20000))
    for country, facts in world.countries.items():
        assert f"The capital of {country} is {facts['capital']}." in corpus
    for animal, facts in world.animals.items():
        assert f"The {animal} lives in the {facts['habitat']}." in corpus
    _, test = make_benchmark("gsm", n_train=0, n_test=60, seed=0)
    for ex in test:
        if ex.domain == "geography" and ex.prompt.startswith(format_prompt("What is the capital of")[:40]):
            assert ex.answer in corpus


def test_bad_input_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="unknown suite"):
        make_benchmark("squad", n_train=1, n_test=1)
    with pytest.raises(ValueError, match="domains"):
        make_benchmark("gsm", n_train=1, n_test=1, domains=("cooking",))
    with pytest.raises(ValueError, match="n_entities"):
        make_world(0, n_entities=2)
