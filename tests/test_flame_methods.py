"""FLAME, HetLoRA, FlexLoRA and FLoRA as federated methods on the smoke model: budgets per tier, what a client
receives and sends, server aggregation on hand-built updates, and end-to-end runs through the runner."""

import math
import warnings

import pytest
import torch

from fedmoe.config import ConfigError, load_config
from fedmoe.data.collate import collate_train
from fedmoe.engines import run
from fedmoe.fl.contract import ClientUpdate
from fedmoe.fl.federation import Federation
from fedmoe.methods import get_method
from fedmoe.methods.hetero.adapters import adapted_base_weights
from fedmoe.methods.hetero.lowrank import from_factors, products, to_factors
from fedmoe.moe.layers import moe_layers, set_top_k
from fedmoe.moe.lora import get_expert_lora, load_lora_state_dict
from fedmoe.results import load_rounds

TIERS = [0, 1, 2, 0]  # explicit tiers for the 4 smoke clients


def _cfg(method="flame", **overrides):
    over = {"method": method, "model.name": "tiny-olmoe", "fed.rounds": 1, "method_args.rank": 4,
            "method_args.tiers": TIERS, **overrides}
    return load_config(None, over, scale="smoke")


@pytest.fixture(scope="module")
def fed():
    return Federation.from_config(_cfg())


@pytest.fixture(scope="module")
def fed_mixtral():
    return Federation.from_config(_cfg(**{"model.name": "tiny-mixtral"}))


def _method(fed, name, **args):
    """The server half of ``name``."""
    return get_method(name).server(fed, {"rank": 4, "tiers": TIERS, **args})


def _client(fed, name, **args):
    """The client half of ``name``."""
    return get_method(name).client(fed, {"rank": 4, "tiers": TIERS, **args})


def _const_state(method, rank, value):
    """A LoRA state of ``rank`` components per expert, every entry ``value``."""
    return from_factors({p: (torch.full((a.shape[0], rank, a.shape[2]), value), torch.full((b.shape[0], b.shape[1],
                         rank), value)) for p, (a, b) in method.factors(method.global_state).items()})


def _update(cid, state, n, **payload):
    return ClientUpdate(cid, 1, state, num_examples=n, metrics={"tokens": 10}, payload=payload)


def test_budgets_per_tier(fed):
    flame, het = _method(fed, "flame"), _method(fed, "hetlora")
    assert flame.full_top_k == 2  # smoke zoo model: 4 experts, top-2 -> ladder 2, 1, 1
    assert [flame.budget(c).top_k for c in range(4)] == [2, 1, 1, 2]
    assert [flame.budget(c).rank for c in range(4)] == [4, 4, 4, 4]
    assert [het.budget(c).rank for c in range(4)] == [4, 2, 1, 4]
    assert [het.budget(c).top_k for c in range(4)] == [2, 2, 2, 2]
    assert _client(fed, "flame").budget(1) == flame.budget(1)  # one budget, the same on both halves
    plan = {t.client_id: t.plan for t in flame.plan(1, [0, 1])}
    assert plan[0]["rescale"] is None and plan[1]["rescale"] is None  # no rescaler yet: the client starts one


@pytest.mark.parametrize(("method", "args", "message"), [
    ("flame", {"rescaler_init": "learned"}, r"rescaler_init='learned'; use one of"),
    ("flame", {"fedavg_floor": 1.5}, r"fedavg_floor=1\.5 must be in \[0, 1\]"),
    ("flame", {"fedavg_floor": -0.1}, r"fedavg_floor=-0\.1 must be in \[0, 1\]"),
    ("flame", {"rescale_lr": 0.0}, r"rescale_lr=0\.0 must be > 0"),
    ("flame", {"calibration_examples": 0}, r"calibration_examples=0 must be >= 1"),
    ("flame", {"frequency": "rate"}, r"frequency='rate'; use one of \('share', 'per_token'\)"),
    ("hetlora", {"weighting": "sparsity"}, r"weighting='sparsity'; use one of \('norm', 'examples'\)"),
])
def test_bad_options_are_refused_before_any_model(method, args, message):
    with pytest.raises(ConfigError, match=message):
        get_method(method).parse_args(args)


def test_hetlora_sends_truncation_and_averages_zero_padded(fed):
    het = _method(fed, "hetlora", weighting="examples")
    tasks = {t.client_id: t for t in het.plan(1, [0, 2])}
    full = het.factors(het.global_state)
    for cid, rank in ((0, 4), (2, 1)):
        got = to_factors(tasks[cid].tensors, het.num_experts)
        assert all(torch.equal(a, full[p][0][:, :rank]) and torch.equal(b, full[p][1][:, :, :rank])
                   for p, (a, b) in got.items())
    # client 0 (rank 4, |D| = 1) all ones; client 2 (rank 1, |D| = 3) all fives:
    # first component (1 + 3*5) / 4 = 4, the other three (1 + 3*0) / 4 = 0.25
    het.aggregate(1, [_update(0, _const_state(het, 4, 1.0), 1), _update(2, _const_state(het, 1, 5.0), 3)])
    for a, b in het.factors(het.global_state).values():
        assert torch.allclose(a[:, 0], torch.full_like(a[:, 0], 4.0)) and torch.allclose(a[:, 1:], torch.tensor(0.25))
        assert torch.allclose(b[:, :, 0], torch.tensor(4.0)) and torch.allclose(b[:, :, 1:], torch.tensor(0.25))


def test_hetlora_client_receives_the_first_r_i_ranks_of_the_global(fed):
    het, client = _method(fed, "hetlora"), _client(fed, "hetlora")
    gen = torch.Generator().manual_seed(0)
    het.global_state = {k: torch.randn(v.shape, generator=gen) for k, v in het.global_state.items()}
    server = het.eval_model()
    for task in het.plan(1, [0, 1, 2]):
        rank = [4, 2, 1][TIERS[task.client_id]]
        load_lora_state_dict(client.model, client.padded(task.tensors))
        for layer in range(2):
            for e in range(het.num_experts):  # peft's own view of expert e's LoRA on both models
                want, got = get_expert_lora(server, layer, e), get_expert_lora(client.model, layer, e)
                for name, value in got.items():
                    keep = (slice(None, rank),) if "lora_A" in name else (slice(None), slice(None, rank))
                    rest = (slice(rank, None),) if "lora_A" in name else (slice(None), slice(rank, None))
                    assert torch.equal(value[keep], want[name][keep]), (task.client_id, layer, e, name)
                    assert torch.count_nonzero(value[rest]) == 0


def test_hetlora_weights_clients_by_lora_norm_by_default(fed):
    het = _method(fed, "hetlora")  # default weighting: norm
    # client 0 rank 4 all ones, client 2 rank 1 all fives, |D| = 1 and 3 (ignored): per expert LoRA,
    # ||B A||_F = r c^2 sqrt(out * in) -> weights 4 : 25. First component (4 * 1 + 25 * 5) / 29, others 4 / 29
    het.aggregate(1, [_update(0, _const_state(het, 4, 1.0), 1), _update(2, _const_state(het, 1, 5.0), 3)])
    for a, b in het.factors(het.global_state).values():
        assert torch.allclose(a[:, 0], torch.tensor(129 / 29)) and torch.allclose(a[:, 1:], torch.tensor(4 / 29))
        assert torch.allclose(b[:, :, 0], torch.tensor(129 / 29)) and torch.allclose(b[:, :, 1:], torch.tensor(4 / 29))
    assert het.args.weighting == "norm"


def test_truncated_client_trains_only_its_components(fed):
    het, client = _method(fed, "hetlora"), _client(fed, "hetlora")
    task = next(t for t in het.plan(1, [2]))  # tier 2: rank 1
    _, state = client.fit(task, client.padded(task.tensors), top_k=client.full_top_k)
    for p, (a, b) in het.factors(state).items():
        assert torch.count_nonzero(a[:, 1:]) == 0 and torch.count_nonzero(b[:, :, 1:]) == 0, p
        assert torch.count_nonzero(b[:, :, 0]) > 0, p  # the live component did train
    update = client.update(task)
    assert all(a.shape[1] == 1 for a, _ in het.factors(update.tensors).values())
    assert task.notes["rank"] == 1 and update.work["train_flops"] > 0


def test_flexlora_averages_products_and_redistributes_by_svd(fed):
    flex = _method(fed, "flexlora")
    # all-ones rank-r factors: B A = r * ones; (1 * 4 + 3 * 1) / 4 * ones = 1.75 * ones (rank 1)
    flex.aggregate(1, [_update(0, _const_state(flex, 4, 1.0), 1), _update(2, _const_state(flex, 1, 1.0), 3)])
    for d in flex.delta.values():
        assert torch.allclose(d, torch.full_like(d, 1.75))
    tasks = {t.client_id: t for t in flex.plan(2, [0, 2])}
    for cid, rank in ((0, 4), (2, 1)):
        got = to_factors(tasks[cid].tensors, flex.num_experts)
        for p, prod in products(got).items():  # Delta W has rank 1: every client gets it exactly
            assert got[p][0].shape[1] == rank and torch.allclose(prod, flex.delta[p], atol=1e-4)
    merged = adapted_base_weights(flex.eval_model())  # the global model: base + alpha / r * Delta W
    scaling = flex.args.alpha / flex.args.rank
    assert all(torch.allclose(merged[p], flex._base[p] + scaling * 1.75, atol=1e-5) for p in merged)


def test_flora_merges_stacked_update_into_base(fed):
    flora = _method(fed, "flora")
    base = adapted_base_weights(flora.model)
    # clients 0 (rank 4) and 2 (rank 1), weights 1 and 3:
    # 0.25 * (4 * 1 * 1) + 0.75 * (1 * 2 * 2) = 1 + 3 = 4 in every entry of B A
    flora.aggregate(1, [_update(0, _const_state(flora, 4, 1.0), 1), _update(2, _const_state(flora, 1, 2.0), 3)])
    assert flora.last_stack["rank"] == 5
    scaling = flora.args.alpha / flora.args.rank
    merged = adapted_base_weights(flora.eval_model())
    assert all(torch.allclose(merged[p], base[p] + scaling * 4.0, atol=1e-5) for p in base)
    # a client rebuilds the same global model from its task, then trains a fresh LoRA on top
    task = flora.plan(2, [1])[0]
    client = _client(fed, "flora")
    update = client.update(task)
    local = adapted_base_weights(client.model)
    assert all(torch.allclose(local[p], merged[p], atol=1e-5) for p in base)
    assert task.notes["rank"] == 2 and all(a.shape[1] == 2 for a, _ in flora.factors(update.tensors).values())
    assert update.work["bytes_down"] > 0


def test_flame_activation_aware_aggregation_on_the_model(fed):
    flame = _method(fed, "flame", temperature=1.0, frequency="per_token", fedavg_floor=0.0)  # the paper's rule
    layers = len(flame.factors(flame.global_state)) // 2  # two fused tensors per MoE layer
    s1, s2 = _const_state(flame, 4, 1.0), _const_state(flame, 4, 8.0)
    # every MoE layer: client 1 routes [3, 1, 0, 0] of 4 tokens, client 2 [0, 4, 0, 0]; |D| = [1, 2]
    u1 = _update(0, s1, 1, rescale=[1.0] * layers)
    u1.expert_tokens = [[3, 1, 0, 0]] * layers
    u2 = _update(1, s2, 2, rescale=[1.0] * layers)
    u2.expert_tokens = [[0, 4, 0, 0]] * layers
    u1.metrics["tokens"] = u2.metrics["tokens"] = 4
    with pytest.warns(UserWarning, match="effective clients"):  # expert 0: client 1 only
        flame.aggregate(1, [u1, u2])
    model = flame.eval_model()
    for layer in range(layers):
        # see test_flame_aggregation.test_per_expert_weighted_average_by_hand; experts nobody activated take
        # FedAvg's weights: (1 * 1 + 2 * 8) / 3 (on real updates both copies equal the previous global)
        want = [1.0, 65 / 9, 17 / 3, 17 / 3]
        for e, value in enumerate(want):
            for t in get_expert_lora(model, layer, e).values():
                assert torch.allclose(t, torch.full_like(t, value), atol=1e-5), (layer, e)


def _tiered_updates(flame, strong_value, weak_value):
    """Client 0 (tier 0: top-2) and client 1 (tier 1: top-1) with the same routing shares: 8 tokens each, every
    expert gets a quarter of a client's routed slots (4 of 16 at top-2, 2 of 8 at top-1); |D| = 1 each."""
    layers = len(flame.factors(flame.global_state)) // 2
    strong = _update(0, _const_state(flame, 4, strong_value), 1, rescale=[1.0] * layers)
    weak = _update(1, _const_state(flame, 4, weak_value), 1, rescale=[1.0] * layers)
    strong.expert_tokens, weak.expert_tokens = [[4, 4, 4, 4]] * layers, [[2, 2, 2, 2]] * layers
    strong.metrics["tokens"] = weak.metrics["tokens"] = 8
    return [strong, weak]


def _expert_values(flame):
    """Every entry of every expert LoRA of the global model (they are constant in these tests)."""
    return torch.cat([t.flatten() for layer in range(2) for e in range(flame.num_experts)
                      for t in get_expert_lora(flame.eval_model(), layer, e).values()])


def test_flame_default_aggregation_does_not_collapse_onto_the_strong_tier(fed):
    # t = 8. per_token frequencies 0.5 (top-2) vs 0.25 (top-1): weights 2^8 = 256 : 1 whatever the data
    flame = _method(fed, "flame", temperature=8.0)
    server = flame.aggregate(1, _tiered_updates(flame, 1.0, 8.0))
    assert torch.allclose(_expert_values(flame), torch.tensor(4.5))  # share: equal weights, (1 + 8) / 2
    assert server["eff_clients_min"] == pytest.approx(2.0) and server["eff_clients_mean"] == pytest.approx(2.0)
    paper = _method(fed, "flame", temperature=8.0, frequency="per_token", fedavg_floor=0.0)
    with pytest.warns(UserWarning, match="effective clients"):
        server = paper.aggregate(1, _tiered_updates(paper, 1.0, 8.0))
    assert torch.allclose(_expert_values(paper), torch.tensor(1 + 7 / 257))  # (256 * 1 + 8) / 257
    assert server["eff_clients_min"] == pytest.approx(257**2 / (256**2 + 1))
    floored = _method(fed, "flame", temperature=8.0, frequency="per_token", fedavg_floor=0.5)
    with warnings.catch_warnings():  # 1 / (0.748^2 + 0.252^2) = 1.60 clients: above 3/4 of FedAvg's 2, no warning
        warnings.simplefilter("error")
        server = floored.aggregate(1, _tiered_updates(floored, 1.0, 8.0))
    assert server["eff_clients_min"] == pytest.approx(1.60, abs=0.01)
    weak = 0.5 / 257 + 0.5 * 0.5  # (1 - lambda) * 1/257 + lambda * |D_1| / sum |D|
    assert torch.allclose(_expert_values(floored), torch.tensor(1 + 7 * weak))


def test_rescaler_starts_at_one_on_a_renormalising_router(fed_mixtral):
    task = _method(fed_mixtral, "flame").plan(1, [1])[0]  # tier 1: top-1 of Mixtral's renormalised top-2
    update = _client(fed_mixtral, "flame", rescaler="fixed").update(task)
    assert task.plan["top_k"] == 1 and update.payload["rescale"] == [1.0, 1.0]


def test_rescaler_is_calibrated_on_the_clients_first_batch(fed):
    flame = _method(fed, "flame", rescaler="fixed")
    task = flame.plan(1, [1])[0]  # tier 1: top-1 of OLMoE's unnormalised top-2; the server has no rescaler yet
    update = _client(fed, "flame", rescaler="fixed").update(task)
    # by hand: MoE layer 0's output on the client's first 16 examples at top-2 / at top-1 (the model as received)
    model = flame.eval_model()
    batch = collate_train(fed.tokenizer, fed.client_data(1)[:16], fed.cfg.fed.max_length)
    block, seen = moe_layers(model)[0].block, []
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    norms = {}
    for k in (2, 1):
        set_top_k(model, k)
        with torch.no_grad():
            norms[k] = float(block(seen[0])[batch["attention_mask"].bool()].double().norm())
    set_top_k(model, 2)
    assert update.payload["rescale"][0] == pytest.approx(norms[2] / norms[1], rel=1e-4)
    assert abs(norms[2] / norms[1] - 2.0) > 0.1  # not k / k_i
    # the server keeps the tier's value (sent in the payload): later clients of the tier start from it
    flame.aggregate(1, [update])
    assert flame.plan(2, [2])[0].plan["rescale"] == pytest.approx(update.payload["rescale"])


def test_rescaler_trains_at_its_own_learning_rate(fed):
    task = _method(fed, "flame").plan(1, [1])[0]
    update = _client(fed, "flame", rescaler_init="ratio", rescale_lr=0.3).update(task)
    # Adam moves a parameter by about its lr per step: the LoRA's lr could move log(s) by 2 * 1e-4 at most
    moved = max(abs(math.log(s / 2.0)) for s in update.payload["rescale"])
    assert moved > 0.1 > 10 * fed.cfg.fed.lr * fed.cfg.fed.local_steps


def test_flame_client_top_k_and_rescaler(fed):
    flame = _method(fed, "flame")
    task = flame.plan(1, [1])[0]  # tier 1: k = 1; no rescaler yet, the client starts it at k / k_i = 2
    client = _client(fed, "flame", rescaler_init="ratio")
    update = client.update(task)
    assert task.plan["top_k"] == 1 and task.notes["rank"] == 4
    assert all(abs(s - 2.0) > 1e-6 for s in update.payload["rescale"])  # trained
    counts = torch.tensor(update.expert_tokens)
    assert torch.equal(counts.sum(-1), torch.full_like(counts.sum(-1), update.metrics["tokens"]))  # one expert/token
    assert client.model.config.num_experts_per_tok == 2  # restored after training
    fixed = _client(fed, "flame", rescaler="fixed", rescaler_init="ratio").update(task)
    none = _client(fed, "flame", rescaler="none").update(task)
    assert fixed.payload["rescale"] == [2.0, 2.0] and none.payload["rescale"] == [1.0, 1.0]
    assert "rescale" not in update.diagnostics  # what the server aggregates travels in the payload
    # per-tier rescaler: |D|-weighted mean of the tier's clients (tiers 1 and 2 both have k = 1)
    u1 = _update(1, update.tensors, 1, rescale=[1.0, 3.0])
    u2 = _update(2, update.tensors, 3, rescale=[2.0, 2.0])
    u1.expert_tokens = u2.expert_tokens = update.expert_tokens
    server = flame.aggregate(1, [u1, u2])
    assert flame.rescales["k1"] == [1.75, 2.25] and server["rescale_k1"] == 2.0
    assert flame.plan(2, [2])[0].plan["rescale"] == [1.75, 2.25]


@pytest.mark.parametrize("method", ["flame", "hetlora", "flexlora", "flora"])
def test_end_to_end_and_resume(tmp_path, method):
    cfg = _cfg(method, **{"fed.rounds": 2})
    folder = run(cfg, out_dir=tmp_path, progress=False)
    rounds = load_rounds(folder)
    assert [r["round"] for r in rounds] == [0, 1, 2] and all("score" in r for r in rounds)
    extra = rounds[-1]["client_log"]
    assert set(extra) == {str(c) for c in rounds[-1]["clients"]}
    for cid, e in extra.items():
        tier = TIERS[int(cid)]
        assert e["tier"] == tier and e["flops_per_token"] > 0
        if method == "flame":
            assert (e["top_k"], e["rank"]) == ([2, 1, 1][tier], 4)
        else:
            assert (e["top_k"], e["rank"]) == (2, [4, 2, 1][tier])
    again = run(cfg, out_dir=tmp_path, progress=False)  # a finished run is reused, not retrained
    assert load_rounds(again) == rounds


def test_flame_tier_model_runs_the_tiers_top_k_through_its_rescaler(fed):
    server = _method(fed, "flame")
    batch = collate_train(fed.tokenizer, fed.client_data(0)[:4], fed.cfg.fed.max_length)
    model = server.eval_model()

    def logits(m):
        with torch.no_grad():
            return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    full = logits(model)
    set_top_k(model, 1)
    top1 = logits(model)
    set_top_k(model, 2)
    with pytest.raises(LookupError, match="tier 1 .top-1. has trained yet"), server.tier_model(1):
        pass
    layers = len(moe_layers(model))
    server.rescales["k1"] = [1.0] * layers
    with server.tier_model(1) as tier_model:
        assert moe_layers(tier_model)[0].top_k == 1
        assert torch.allclose(logits(tier_model), top1)
    server.rescales["k1"] = [3.0] * layers  # the tier's learned gain changes what its model predicts
    with server.tier_model(1) as tier_model:
        assert not torch.allclose(logits(tier_model), top1, atol=1e-3)
    assert moe_layers(model)[0].top_k == 2 and torch.allclose(logits(model), full)  # restored after the block
    with server.tier_model(0) as tier_model:
        assert torch.allclose(logits(tier_model), full)
