"""What each client deploys (``Server.deployed_models``) and its score (``fedmoe.studies.deployed``): HetLoRA's
and FlexLoRA's rank-r_i copies against hand truncation and a hand SVD, every registered method covering each
client exactly once, and the |D_i|-weighted score of a finished run against a hand-computed mean."""

import json

import numpy as np
import pytest
import torch

from fedmoe.config import load_config
from fedmoe.fl.federation import Federation
from fedmoe.methods import available_methods, get_method
from fedmoe.methods.hetero.adapters import adapted_base_weights
from fedmoe.methods.hetero.lowrank import A_SUFFIX, EXPERT_MARK, products, to_factors
from fedmoe.moe.lora import lora_state_dict

TIERS = [0, 1, 2, 0]  # ranks 4, 2, 1, 4 at rank 4; top-k 2, 1, 1, 2 for FLAME
ARGS = {
    "flame": {"rank": 4, "tiers": TIERS},
    "hetlora": {"rank": 4, "tiers": TIERS},
    "flexlora": {"rank": 4, "tiers": TIERS},
    "flora": {"rank": 4, "tiers": TIERS},
    "fftmoe": {"tiers": TIERS},
    "flux": {"profile_examples": 4},
    "fmes": {"profile_examples": 4},
}


@pytest.fixture(scope="module")
def fed():
    return Federation.from_config(load_config(None, {"method": "fedit"}, scale="smoke"))


def _server(fed, method):
    return get_method(method).server(fed, ARGS.get(method))


def _random_global(server, seed=0):
    """Random values (B non-zero) in the server's global LoRA state."""
    gen = torch.Generator().manual_seed(seed)
    server.global_state = {k: torch.randn(v.shape, generator=gen) for k, v in server.global_state.items()}


def _deployed_states(server):
    """``{clients: (LoRA state, same_as_global)}`` read from each group's model before taking the next."""
    return {g.clients: ({k: v.clone() for k, v in lora_state_dict(g.model).items()}, g.same_as_global)
            for g in server.deployed_models()}


def test_hetlora_deploys_the_global_lora_truncated_to_each_clients_rank(fed):
    server = _server(fed, "hetlora")
    _random_global(server)
    deployed = _deployed_states(server)
    assert list(deployed) == [(0, 3), (1,), (2,)]
    assert deployed[0, 3][1] and not deployed[1,][1] and not deployed[2,][1]
    assert all(torch.equal(deployed[0, 3][0][k], v) for k, v in server.global_state.items())
    rank, experts, kept = 4, server.num_experts, 2  # client 1 is tier 1: rank 2
    for key, value in server.global_state.items():
        groups = experts if EXPERT_MARK in key else 1
        if key.endswith(A_SUFFIX):  # A [G*r, in]: group g's components at rows g*r .. g*r + r
            hand = value.reshape(groups, rank, -1).clone()
            hand[:, kept:] = 0
        else:  # B [out, r*G]: component j of group g at column j*G + g
            hand = value.reshape(value.shape[0], rank, groups).clone()
            hand[:, kept:] = 0
        assert torch.equal(deployed[1,][0][key], hand.reshape(value.shape)), key


def test_flexlora_deploys_a_hand_svd_of_the_global_update_at_each_clients_rank(fed):
    server = _server(fed, "flexlora")
    gen = torch.Generator().manual_seed(1)
    server.delta = {p: torch.randn(d.shape, generator=gen, dtype=torch.float64)
                    for p, d in products(server.factors(server.global_state)).items()}
    plain = adapted_base_weights(_server(fed, "flexlora").eval_model())  # no update yet: the base weights
    merged = adapted_base_weights(server.eval_model())  # the global model merges the update into them ...
    deployed = {}
    for group in server.deployed_models():
        deployed[group.clients] = to_factors(lora_state_dict(group.model), server.num_experts)
        assert not group.same_as_global
        weights = adapted_base_weights(group.model)  # ... a client's copy holds only its LoRA on the base
        assert all(torch.equal(weights[p], plain[p]) for p in weights)
        assert not any(torch.equal(weights[p], merged[p]) for p in weights)
    assert list(deployed) == [(0, 3), (1,), (2,)]
    for clients, rank in (((0, 3), 4), ((1,), 2), ((2,), 1)):
        for p, delta in server.delta.items():
            u, s, vt = np.linalg.svd(delta.numpy(), full_matrices=False)
            hand = (u[:, :, :rank] * s[:, None, :rank]) @ vt[:, :rank]
            a, b = deployed[clients][p]
            assert float(a[:, rank:].abs().sum() + b[:, :, rank:].abs().sum()) == 0.0  # zero padding
            got = (b.double() @ a.double()).numpy()
            assert np.allclose(got, hand, atol=1e-4 * np.abs(hand).max()), (p, rank)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_deploys_one_model_per_group_covering_each_client_once(fed, method):
    server = _server(fed, method)
    groups = []
    for g in server.deployed_models():
        assert isinstance(g.model, torch.nn.Module)
        groups.append(g)
    clients = [c for g in groups for c in g.clients]
    assert sorted(clients) == list(range(fed.cfg.fed.num_clients))
    expected = {"hetlora": [(0, 3), (1,), (2,)], "flexlora": [(0, 3), (1,), (2,)],
                "flame": [(0, 3), (1, 2)],  # tiers 1 and 2 both run top-1 (Mixtral's renormalised router: scale 1)
                "fftmoe": [(0, 3), (1,), (2,)]}
    assert [g.clients for g in groups] == expected.get(method, [(0, 1, 2, 3)])
    assert groups[0].same_as_global == (method != "flexlora")


def test_local_only_clients_deploy_their_own_adapter(fed):
    server = _server(fed, "local")
    trained = {k: v + 1 for k, v in server.global_state.items()}
    server.client_states[2] = trained
    deployed = _deployed_states(server)
    assert list(deployed) == [(0, 1, 3), (2,)]
    assert deployed[0, 1, 3][1] and not deployed[2,][1]
    assert all(torch.equal(deployed[2,][0][k], v) for k, v in trained.items())


def test_deployed_scores_weight_each_group_by_its_clients_examples(tmp_path, fake_run, monkeypatch):
    """Hand-chosen groups, |D_i| and per-item scores: clients 0 (3 examples) and 1, 2 (1 each) give weights 3 and 2."""
    from fedmoe.methods.base import Deployed
    from fedmoe.studies import deployed as dep

    class Fed:
        test_set = ["item a", "item b"]

        def num_examples(self, client):
            return [3, 1, 1][client]

    class Server:
        def deployed_models(self):
            yield Deployed((0,), "global", same_as_global=True)
            yield Deployed((1, 2), "weak", same_as_global=False)

    items = {"global": [1.0, 0.0], "weak": [0.0, 0.5]}
    monkeypatch.setattr(dep, "final_server", lambda folder, method: (None, Fed(), Server()))
    monkeypatch.setattr(dep, "evaluate_on", lambda cfg, fed, model, examples: {
        "score": float(np.mean(items[model])), "item_scores": items[model]})
    result = dep.deployed_scores(fake_run(tmp_path / "run", 0, [[0.0, 0.0]]))
    assert result["item_scores"] == pytest.approx([0.6, 0.2]) and result["score"] == pytest.approx(0.4)
    assert [(g["clients"], g["weight"], g["score"], g["same_as_global"]) for g in result["groups"]] == [
        ([0], 3, 0.5, True), ([1, 2], 2, 0.25, False)]
    assert not result["same_as_global"]


def test_deployed_scores_of_a_finished_flame_run_pair_with_its_own_scores(tmp_path):
    from fedmoe.engines import run
    from fedmoe.results import load_rounds
    from fedmoe.studies import deployed as dep
    from fedmoe.studies import flame as ex

    cfg = ex.make_config("flame", "uniform", scale="smoke", method_args={"tiers": [0, 1, 2, 1]})
    folder = run(cfg, out_dir=tmp_path, progress=False)
    result = dep.score_deployed([folder], jobs=1)[0]
    fed = Federation.from_config(cfg)
    groups = result["groups"]
    assert sorted(c for g in groups for c in g["clients"]) == [0, 1, 2, 3]
    sizes = [fed.num_examples(c) for c in range(4)]
    assert [g["weight"] for g in groups] == [sum(sizes[c] for c in g["clients"]) for g in groups]
    hand = sum(sizes[c] * np.array(g["item_scores"]) for g in groups for c in g["clients"]) / sum(sizes)
    assert np.allclose(result["item_scores"], hand) and result["score"] == pytest.approx(hand.mean())
    assert len(groups) > 1 and not result["same_as_global"]
    (full,) = [g for g in groups if g["same_as_global"]]  # tier 0 runs the global model: the run's own scores
    assert full["clients"] == [0] and full["item_scores"] == load_rounds(folder)[-1]["item_scores"]
    tiers = ex.tier_scores(folder)["tiers"]  # the FLAME study scores the same tier models
    assert tiers["0"]["item_scores"] == full["item_scores"]
    for tier, row in tiers.items():
        (group,) = [g for g in groups if int(tier) in [cfg.method_args["tiers"][c] for c in g["clients"]]]
        assert row["item_scores"] == group["item_scores"]
    (folder / dep.DEPLOYED_FILE).write_text(json.dumps({**result, "item_scores": [0.0] * len(hand)}))
    assert not dep.deployed_item_scores(folder).any()  # read back from the cache, not recomputed
