"""The per-process world cache of :mod:`fedmoe.fl.federation`: keyed by what the world derives from (model, data,
the partition's size, ``data_seed``), never by the method, its options, the run seed or the learning rate."""

import pytest
import torch

from fedmoe.config import load_config
from fedmoe.fl import federation
from fedmoe.fl.federation import Federation


@pytest.fixture
def model_loads(monkeypatch):
    """Every base-model load, recorded; a small stand-in model instead of the zoo's, and empty world caches before
    and after (so the stand-in never reaches another test)."""
    loads = []

    def load_base_model(model_cfg, *, seed, progress):
        loads.append((model_cfg.name, seed))
        return torch.nn.Linear(2, 2), object()

    monkeypatch.setattr("fedmoe.moe.loading.load_base_model", load_base_model)
    for cache in (federation._DATA, federation._MODELS):
        cache.clear()
    yield loads
    for cache in (federation._DATA, federation._MODELS):
        cache.clear()


def _cfg(**overrides):
    return load_config(None, overrides, scale="smoke")


def test_two_methods_at_two_learning_rates_share_one_world(model_loads):
    fedit, hetlora = _cfg(method="fedit"), _cfg(method="hetlora", **{"fed.lr": 0.01})
    a, b = Federation.from_config(fedit), Federation.from_config(hetlora)
    assert model_loads == [("tiny-mixtral", 0)]  # built once
    assert a._base_model is b._base_model and a.train_parts is b.train_parts and a.test_set is b.test_set
    # ... while each federation holds its own run's config
    assert (a.cfg, b.cfg) == (fedit, hetlora)
    assert (a.train_config(0, 1).lr, b.train_config(0, 1).lr) == (fedit.fed.lr, 0.01)


def test_another_data_seed_is_another_world(model_loads):
    a, b = Federation.from_config(_cfg()), Federation.from_config(_cfg(data_seed=1))
    assert model_loads == [("tiny-mixtral", 0), ("tiny-mixtral", 1)]
    assert a._base_model is not b._base_model and a.test_set != b.test_set and a.train_parts != b.train_parts


def test_another_client_count_shares_the_model_but_not_the_partition(model_loads):
    a = Federation.from_config(_cfg())
    b = Federation.from_config(_cfg(**{"fed.num_clients": 3}))
    assert len(model_loads) == 1 and a._base_model is b._base_model and a.test_set == b.test_set
    assert (len(a.train_parts), len(b.train_parts), len(b.devices)) == (4, 3, 3)
