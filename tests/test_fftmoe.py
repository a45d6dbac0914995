"""FFT-MoE: the sparse MoE adapter, the auxiliary loss, aggregation, the budget table and a smoke run."""

import math

import pytest
import torch
import transformers

from fedmoe.config import load_config
from fedmoe.data.records import Example
from fedmoe.fl.contract import ClientUpdate
from fedmoe.fl.federation import Federation
from fedmoe.methods.base import get_method
from fedmoe.methods.fftmoe.adapter import (
    MoEAdapter,
    adapter_parameters,
    adapter_state_dict,
    adapters,
    attach_moe_adapters,
    is_router_key,
    load_adapter_state_dict,
    pop_routing,
    set_adapter_top_k,
)
from fedmoe.methods.fftmoe.aux_loss import (
    balance_loss,
    data_skew,
    diversity_loss,
    heterogeneity_factor,
    load_cv,
    routing_aux_loss,
)
from fedmoe.methods.fftmoe.budget import (
    adapter_params,
    bottleneck_for_budget,
    budget_table,
    format_budget_table,
)
from fedmoe.methods.fftmoe.method import FFTMoEArgs, FFTMoEClient, FFTMoEServer, client_budget
from fedmoe.train import finetune


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def _models(tiny_moe):
    return {"llama": tiny_llama(), **{f: tiny_moe(f) for f in ("mixtral", "olmoe", "qwen2_moe")}}


def _ids(vocab=64, batch=2, seq=7):
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fed():
    return Federation.from_config(load_config(None, {"method": "fftmoe"}, scale="smoke"))


# --- adapter ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "mixtral", "olmoe", "qwen2_moe"])
def test_adapter_starts_as_identity_on_dense_and_moe_models(tiny_moe, family):
    model = _models(tiny_moe)[family]
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        attach_moe_adapters(model, num_experts=4, bottleneck=8, top_k=2)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert len(adapters(model)) == model.config.num_hidden_layers
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".fft_adapter." not in n)
    assert all(p.requires_grad for p in adapter_parameters(model))
    routing = pop_routing(model)
    assert [tuple(p.shape) for p, _ in routing][0] == (ids.numel(), 4)


def test_only_adapter_gets_gradients_and_changes_the_output():
    model = attach_moe_adapters(tiny_llama(), num_experts=4, bottleneck=8, top_k=2)
    ids = _ids()
    base = {n: p.clone() for n, p in model.named_parameters() if ".fft_adapter." not in n}
    opt = torch.optim.SGD(adapter_parameters(model), lr=0.5)
    before = model(input_ids=ids, labels=ids).loss
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert model(input_ids=ids, labels=ids).loss < before
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert all(p.grad is None for n, p in model.named_parameters() if n in base)


def test_gating_is_a_softmax_renormalised_over_the_top_k_logits():
    torch.manual_seed(0)
    a = MoEAdapter(hidden_size=6, num_experts=5, bottleneck=3, top_k=2)
    with torch.no_grad():
        a.w_out.normal_()
    x = torch.randn(4, 6)
    logits = x @ a.router.weight.T
    expected = torch.zeros_like(x)
    for t in range(4):
        top = logits[t].topk(2).indices
        g = logits[t, top].exp() / logits[t, top].exp().sum()
        for gi, j in zip(g, top, strict=True):
            expected[t] += gi * (a.w_out[j] @ torch.nn.functional.gelu(a.w_in[j] @ x[t]))
    torch.testing.assert_close(a(x), expected)
    probs, idx = a.last_routing
    torch.testing.assert_close(probs, logits.softmax(-1))
    assert torch.equal(idx.sort(-1).values, logits.topk(2).indices.sort(-1).values)


def test_top_k_changes_routing_not_shapes(tiny_moe):
    model = attach_moe_adapters(tiny_moe("mixtral"), num_experts=6, bottleneck=4, top_k=1)
    shapes = {k: v.shape for k, v in adapter_state_dict(model).items()}
    ids = _ids(model.config.vocab_size)
    for k in (1, 3, 6):
        set_adapter_top_k(model, k)
        with torch.no_grad():
            model(input_ids=ids)
        assert {k_: v.shape for k_, v in adapter_state_dict(model).items()} == shapes
        assert all(idx.shape == (ids.numel(), k) for _, idx in pop_routing(model))
    with pytest.raises(ValueError, match="top_k=7 is impossible with 6 adapter experts"):
        set_adapter_top_k(model, 7)


def test_adapter_state_round_trips_between_models_and_rejects_mismatches(tiny_moe):
    a = attach_moe_adapters(tiny_moe("olmoe"), num_experts=4, bottleneck=8, top_k=2)
    torch.manual_seed(5)
    b = attach_moe_adapters(tiny_moe("olmoe"), num_experts=4, bottleneck=8, top_k=2)
    state = adapter_state_dict(a)
    assert any(is_router_key(k) for k in state) and not all(is_router_key(k) for k in state)
    load_adapter_state_dict(b, state)
    assert all(torch.equal(v, adapter_state_dict(b)[k]) for k, v in state.items())
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state_dict(b, {k: v for k, v in state.items() if not is_router_key(k)})
    c = attach_moe_adapters(tiny_moe("olmoe"), num_experts=4, bottleneck=4, top_k=2)
    with pytest.raises(ValueError, match="same num_experts and bottleneck"):
        load_adapter_state_dict(c, state)
    with pytest.raises(ValueError, match="already has FFT-MoE adapters"):
        attach_moe_adapters(a)


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": 9}, "top_k=9 must be in 1..num_experts=8"),
    ({"bottleneck": 0}, "bottleneck=0 must be >= 1"),
    ({"num_experts": 0, "top_k": 1}, "at least one expert"),
    ({"activation": "tanh"}, "unknown adapter activation"),
    ({"aux_coef": -1.0}, "must be >= 0"),
    ({"lr": 0.0}, "lr=0.0 must be > 0"),
])
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FFTMoEArgs(**kwargs)


# --- auxiliary loss -------------------------------------------------------------------------------------
def test_balance_and_diversity_terms_by_hand():
    m = 4
    balanced = (torch.full((4, m), 0.25), torch.arange(4)[:, None])
    assert balance_loss(*balanced).item() == pytest.approx(1.0)  # 4 * sum_j (1/4)(1/4)
    assert diversity_loss(balanced[0]).item() == pytest.approx(0.0)
    skewed = (torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(4, 1), torch.zeros(4, 1, dtype=torch.long))
    assert balance_loss(*skewed).item() == pytest.approx(4 * 0.7)  # f = (1, 0, 0, 0), Pbar_0 = 0.7
    entropy = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    assert diversity_loss(skewed[0]).item() == pytest.approx(1 - entropy)
    collapsed = (torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1), torch.zeros(4, 1, dtype=torch.long))
    assert balance_loss(*collapsed).item() == pytest.approx(4.0)
    assert diversity_loss(collapsed[0]).item() == pytest.approx(1.0, abs=1e-6)
    total = routing_aux_loss([balanced, collapsed], 1.5, balance_weight=1.0, diversity_weight=2.0)
    assert total.item() == pytest.approx(1.5 * ((1 + 0) + (4 + 2 * 1)) / 2, abs=1e-5)


def test_heterogeneity_factor_grows_with_skew_and_shrinking_budget():
    h = [heterogeneity_factor(k, 8, s) for k in (8, 4, 1) for s in (0.0, 0.5)]
    assert h[0] == 1.0 and h[0] < h[1]  # skew at full budget
    assert h[0] < h[2] < h[4] and h[1] < h[3] < h[5]  # budget K/M falling at fixed skew
    assert heterogeneity_factor(1, 8, 1.0, budget_weight=2, skew_weight=3) == pytest.approx(1 + 2 * 7 / 8 + 3)
    with pytest.raises(ValueError, match="top_k"):
        heterogeneity_factor(9, 8, 0.0)


def test_data_skew_and_load_cv():
    ex = lambda d: Example(prompt="p", answer="a", domain=d, metric="exact_match")  # noqa: E731
    domains = ["a", "b", "c"]
    assert data_skew([ex("a"), ex("b"), ex("c")], domains) == pytest.approx(0.0)
    assert data_skew([ex("a")] * 3, domains) == pytest.approx(1.0)
    assert 0 < data_skew([ex("a"), ex("a"), ex("b")], domains) < 1
    assert load_cv(torch.tensor([[5, 5, 5, 5]])) == 0.0
    assert load_cv(torch.tensor([[4, 0, 0, 0], [1, 1, 1, 1]])) == pytest.approx(math.sqrt(3) / 2)


# --- server and client ----------------------------------------------------------------------------------
def _update(server, client, value, n):
    return ClientUpdate(client, 1, {k: torch.full_like(v, value) for k, v in server.global_state.items()},
                        num_examples=n, metrics={"aux_loss": 0.0}, diagnostics={"top_k": 2, "load_cv": 0.0})


@pytest.mark.parametrize("personal", [False, True])
def test_aggregation_is_the_example_weighted_average(fed, personal):
    server = FFTMoEServer(fed, FFTMoEArgs(personal_router=personal))
    server.aggregate(1, [_update(server, 0, 1.0, 10), _update(server, 2, 4.0, 30)])
    expert = next(v for k, v in server.global_state.items() if not is_router_key(k))
    router = next(v for k, v in server.global_state.items() if is_router_key(k))
    assert torch.allclose(expert, torch.full_like(expert, (10 * 1 + 30 * 4) / 40))
    if not personal:
        assert torch.allclose(router, torch.full_like(router, 3.25))
        assert server.routers == {}
        return
    sizes = [len(fed.client_data(c)) for c in (0, 2)]
    assert torch.allclose(router, torch.full_like(router, (sizes[0] * 1 + sizes[1] * 4) / sum(sizes)))
    sent = {t.client_id: t.tensors for t in server.plan(2, [0, 1, 2])}
    for client, value in ((0, 1.0), (2, 4.0)):  # each client gets its own router back, the averaged experts
        assert all(torch.all(v == value) for k, v in sent[client].items() if is_router_key(k))
        assert all(torch.allclose(v, torch.full_like(v, 3.25)) for k, v in sent[client].items()
                   if not is_router_key(k))
    assert all(torch.equal(v, server.global_state[k]) for k, v in sent[1].items())  # never trained: global
    restored = FFTMoEServer(fed, FFTMoEArgs(personal_router=True))
    restored.load_state_dict(server.state_dict())
    assert sorted(restored.routers) == [0, 2]
    personal_models = dict((c, adapter_state_dict(m)) for c, m in server.personalised_models())
    assert sorted(personal_models) == list(range(fed.cfg.fed.num_clients))
    assert all(torch.all(v == 4.0) for k, v in personal_models[2].items() if is_router_key(k))


def test_client_update_trains_adapter_only_and_lowers_the_loss():
    fed = Federation.from_config(load_config(None, {"method": "fftmoe", "fed.local_steps": 12}, scale="smoke"))
    args = FFTMoEArgs(lr=1e-2)
    server, client = FFTMoEServer(fed, args), FFTMoEClient(fed, args)
    base = {n: p.clone() for n, p in fed.base_model().named_parameters()}
    task = server.plan(1, [3])[0]
    tier, k = client_budget(fed, args, 3)
    assert (tier, k) == (2, 1)  # the smoke fleet's Jetson Orin NX: K = 4 // 2**2

    def loss_on_client(state):
        load_adapter_state_dict(client.model, state)
        set_adapter_top_k(client.model, k)
        cfg = fed.train_config(3, 1, lr=1e-9, steps=4)
        return finetune(client.model, fed.tokenizer, fed.client_data(3), cfg, params=adapter_parameters(
            client.model), progress=False).mean_loss

    before = loss_on_client(task.tensors)
    update = client.update(task)
    assert loss_on_client(update.tensors) < before
    assert all(torch.equal(p, base[n]) for n, p in client.model.named_parameters() if n in base)
    assert update.diagnostics["top_k"] == 1 and update.num_examples == len(fed.client_data(3))
    load = torch.tensor(update.diagnostics["adapter_load"])
    assert load.shape == (fed._base_model.config.num_hidden_layers, args.num_experts)
    assert (load.sum(1) == update.metrics["tokens"] * k).all()
    assert update.diagnostics["h"] == pytest.approx(1 + (1 - 1 / 8) + update.diagnostics["skew"])
    p = adapter_params(fed.priced_config, 8, 16, 1)
    assert update.diagnostics["trainable_params"] == p.total == sum(x.numel() for x in adapter_parameters(client.model))
    assert update.work["bytes_up"] == p.total * 4 and update.work["train_flops"] > 0


def test_budget_table_counts_match_the_models(fed):
    rows = budget_table(fed, {"fedit": None, "hetlora": {"rank": 8}, "fftmoe": {"bottleneck": 8}})
    assert len(rows) == 3 * fed.cfg.fed.num_clients
    fft = [r for r in rows if r["method"] == "fftmoe"]
    model = attach_moe_adapters(fed.base_model(), num_experts=8, bottleneck=8, top_k=4)
    assert {r["trainable_params"] for r in fft} == {sum(p.numel() for p in adapter_parameters(model))}
    tier0 = next(r for r in fft if r["tier"] == 0)
    assert tier0["active_params"] == 2 * (8 * 32 + 4 * 2 * 32 * 8)  # 2 blocks: router + 4 experts each
    weak = {r["method"]: r for r in rows if r["client"] == 3}
    assert weak["hetlora"]["budget"] == "rank=2" and weak["fftmoe"]["budget"] == "top_k=1"
    assert weak["fftmoe"]["train_flops_per_token"] < tier0["train_flops_per_token"]
    assert "MFLOP/token" in format_budget_table(rows)
    fedit_total = rows[0]["trainable_params"]
    b = bottleneck_for_budget(fed.priced_config, 8, fedit_total)
    assert abs(adapter_params(fed.priced_config, 8, b, 4).total - fedit_total) <= 2 * 8 * 2 * 32  # within b +- 1
    with pytest.raises(ValueError, match="not 'flux'"):
        budget_table(fed, {"flux": None})


def test_local_test_splits_partition_the_test_set(fed):
    parts = [fed.client_test_data(c) for c in range(fed.cfg.fed.num_clients)]
    assert sorted(map(id, (ex for p in parts for ex in p))) == sorted(map(id, fed.test_set))


# --- end to end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("personal", [False, True])
def test_smoke_run_finishes_and_resumes_exactly(tmp_path, personal):
    from fedmoe.engines import run
    from fedmoe.results import load_rounds, load_summary

    cfg = load_config(None, {"method": "fftmoe", "fed.rounds": 2, "method_args": {"personal_router": personal}},
                      scale="smoke")
    full = run(cfg, out_dir=tmp_path / "a", progress=False)
    rounds = load_rounds(full)
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["sim_time"] > 0
    extra = next(iter(rounds[-1]["client_log"].values()))
    assert {"top_k", "load_cv", "adapter_load", "flops_per_token"} <= set(extra)
    if personal:
        run(cfg, out_dir=tmp_path / "b", stop_after=1, progress=False)
        resumed = run(cfg, out_dir=tmp_path / "b", progress=False)
        keys = ("train_loss", "score", "sim_time")
        assert [{k: r.get(k) for k in keys} for r in load_rounds(resumed)] == [{k: r.get(k) for k in keys} for r in rounds]
        assert load_summary(resumed)["final_score"] == load_summary(full)["final_score"]


def test_method_is_registered_with_its_args():
    method = get_method("fftmoe")
    assert method.Args is FFTMoEArgs


def test_aux_loss_lowers_the_load_coefficient_of_variation():
    fed = Federation.from_config(load_config(None, {"method": "fftmoe", "fed.local_steps": 20}, scale="smoke"))
    cv = {}
    for aux in (False, True):
        args = FFTMoEArgs(aux_loss=aux, aux_coef=0.1)
        update = FFTMoEClient(fed, args).update(FFTMoEServer(fed, args).plan(1, [0])[0])
        cv[aux] = update.diagnostics["load_cv"]
    assert cv[True] < 0.5 * cv[False]
