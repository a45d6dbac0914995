"""One contract, every registered method: plan -> client update -> aggregate -> state_dict -> resume.

Each method runs one round on the smoke federation with its client half built the way the Flower ClientApp
builds it (no server half may be constructed in a client process); the update must survive the JSON/tensor
transport, the server state a ``torch.load(weights_only=True)`` round trip, and a server resumed from that
state must plan and aggregate exactly as the original.
"""

import io
import json

import pytest
import torch

from fedmoe.config import load_config
from fedmoe.fl.contract import task_from_json, task_to_json, update_from_json, update_to_json
from fedmoe.fl.federation import Federation
from fedmoe.methods import available_methods, get_method
from fedmoe.methods.base import Server

TIERS = [0, 1, 2, 0]
ARGS = {
    "flame": {"rank": 4, "tiers": TIERS},
    "hetlora": {"rank": 4, "tiers": TIERS},
    "flexlora": {"rank": 4, "tiers": TIERS},
    "flora": {"rank": 4, "tiers": TIERS},
    "flux": {"profile_examples": 4},
    "fmes": {"profile_examples": 4},
}
FAST = ("fedit", "local", "flame", "flux")  # one per family runs by default; the rest are marked slow


def _cfg(method: str):
    return load_config(None, {"method": method, "fed.local_steps": 1, "method_args": ARGS.get(method, {})},
                       scale="smoke")


@pytest.fixture(scope="module")
def fed():
    return Federation.from_config(_cfg("fedit"))


def same(a, b) -> bool:
    """Exact equality of nested state (tensors compared bit for bit, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0)))
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def reloaded(state):
    """``state`` after torch.save and torch.load(weights_only=True) (what a checkpoint goes through)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def client_half_as_flower_builds_it(method: str, monkeypatch):
    """The Flower ClientApp's client half for ``method``, with server construction forbidden."""
    from fedmoe.engines import flower

    def no_server(self, *args, **kwargs):
        raise AssertionError(f"a client process built a server half ({type(self).__name__})")

    flower._client_half.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(Server, "__init__", no_server)
        client = flower._client_half(json.dumps(_cfg(method).to_dict(), sort_keys=True))
    flower._client_half.cache_clear()
    return client


def transported(update):
    """An update after the engines' transport (tensors beside the JSON of everything else)."""
    return update_from_json(update_to_json(update), update.tensors)


@pytest.mark.parametrize("method", [pytest.param(m, marks=[] if m in FAST else pytest.mark.slow)
                                    for m in available_methods()])
def test_method_contract(fed, method, monkeypatch):
    spec = get_method(method)
    server = spec.server(fed, ARGS.get(method))
    client = client_half_as_flower_builds_it(method, monkeypatch)
    assert isinstance(client, spec.Client) and not isinstance(client, Server)
    if hasattr(client, "model"):  # the client's model is its own, never the server's evaluation model
        server_storage = {p.data_ptr() for p in server.model.parameters()}
        assert not server_storage & {p.data_ptr() for p in client.model.parameters()}

    tasks = server.plan(1, [0, 2])
    assert [t.client_id for t in tasks] == [0, 2] or method == "central"
    sent = [task_from_json(task_to_json(t), t.tensors) for t in tasks]
    assert all(s.notes == {} and s.plan == t.plan for s, t in zip(sent, tasks, strict=True))  # notes stay home
    updates = [transported(client.update(t)) for t in sent]
    for task, u in zip(tasks, updates, strict=True):
        assert (u.client_id, u.round) == (task.client_id, 1) and u.num_examples > 0 and u.tensors
        assert u.work["train_flops"] > 0 and u.metrics["steps"] >= 1
        assert not any(k in u.payload for k in ("top_k", "tier", "rank", "assign_wall"))  # nothing echoed back

    resumed = spec.server(fed, ARGS.get(method))
    server.aggregate(1, updates)
    resumed.load_state_dict(reloaded(server.state_dict()))
    assert same(resumed.state_dict(), server.state_dict())
    next_a, next_b = server.plan(2, [1, 3]), resumed.plan(2, [1, 3])
    assert all(same(a.tensors, b.tensors) and a.plan == b.plan for a, b in zip(next_a, next_b, strict=True))
    server.aggregate(2, updates)
    resumed.aggregate(2, updates)
    assert same(resumed.state_dict(), server.state_dict())
    assert next(iter(server.eval_models())) is not None


@pytest.mark.parametrize("method", [pytest.param(m, marks=[] if m in FAST else pytest.mark.slow)
                                    for m in available_methods()])
def test_method_completes_a_round_with_one_client_failing(method):
    """Every real update passes the server's validation, and the server aggregates the survivors of a round
    in which one sampled client failed."""
    from fedmoe.fl.contract import ClientFailure
    from fedmoe.fl.robust import screen

    fed = Federation.from_config(_cfg(method))
    spec = get_method(method)
    server, client = spec.server(fed, fed.cfg.method_args), spec.client(fed, fed.cfg.method_args)
    before = reloaded(server.state_dict())
    tasks = server.plan(1, [0, 1, 2])
    answers = [ClientFailure(t.client_id, "gone") if t.client_id == 1 else transported(client.update(t)) for t in tasks]
    updates, failures = screen(fed, server, tasks, answers)
    assert [u.client_id for u in updates] == [t.client_id for t in tasks if t.client_id != 1]
    assert failures == ({1: "gone"} if method != "central" else {})
    server.aggregate(1, updates)
    assert not same(server.state_dict(), before)
    assert next(iter(server.eval_models())) is not None
