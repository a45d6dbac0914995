"""``zoo.domain_routing``: the per-domain routing frequencies learn notebook 02 plots are the ones
``zoo.specialisation`` measures its routing divergence on."""

import dataclasses

import pytest
import torch

from fedmoe.data.offline import DOMAINS
from fedmoe.moe import zoo

TINY = dataclasses.replace(zoo.SCALES["smoke"], steps=4, n_docs=200, vocab_size=300)


@pytest.fixture(scope="module")
def pretrained():
    model, tokenizer, _ = zoo.pretrain("tiny-mixtral", TINY, seed=0, progress=False)
    return model, tokenizer


def test_domain_routing_is_what_specialisation_measures(pretrained):
    model, tokenizer = pretrained
    freqs = zoo.domain_routing(model, tokenizer, 0, n_docs=120, seq_len=32)
    assert list(freqs) == list(DOMAINS)
    for f in freqs.values():
        assert f.shape == (TINY.num_layers, TINY.num_experts)
        assert torch.allclose(f.sum(dim=1), torch.full((TINY.num_layers,), float(TINY.top_k)))
    spec = zoo.specialisation(model, tokenizer, 0, n_docs=120, seq_len=32)
    assert zoo._mean_pairwise_jsd(freqs) == pytest.approx(spec["jsd"], rel=1e-6)


def test_domain_routing_differs_between_models_and_seeds(pretrained):
    model, tokenizer = pretrained
    torch.manual_seed(1)
    other = type(model)(model.config).eval()
    mine = zoo.domain_routing(model, tokenizer, 0, n_docs=120, seq_len=32)
    theirs = zoo.domain_routing(other, tokenizer, 0, n_docs=120, seq_len=32)
    assert any(not torch.equal(mine[d], theirs[d]) for d in DOMAINS)
    held_out = zoo.domain_routing(model, tokenizer, 1, n_docs=120, seq_len=32)
    assert any(not torch.equal(mine[d], held_out[d]) for d in DOMAINS)
