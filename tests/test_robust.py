"""Unreliable clients: failures and drop-outs, retried rounds, rejected updates, and the run folder's lock."""

import copy
import re
from types import SimpleNamespace

import matplotlib
import pytest
import torch

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.engines.inprocess import in_process_executor
from fedmoe.experiment import run as run_with
from fedmoe.fl.contract import ClientFailure, ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation, sample_clients
from fedmoe.fl.robust import (
    RoundFailedError,
    answer_or_failure,
    drops_out,
    run_round,
    screen,
    validate_update,
)
from fedmoe.methods import get_method
from fedmoe.results import RunFolder, RunFolderLockedError, load_rounds

matplotlib.use("Agg")

MAX_NORM = 100.0
ARGS = {"flame": {"rank": 4, "tiers": [0, 1, 2, 0]}, "flux": {"profile_examples": 4}}


def _cfg(method="fedit", **overrides):
    return load_config(None, {"method": method, "fed.local_steps": 1, "method_args": ARGS.get(method, {}),
                              **overrides}, scale="smoke")


# --- the round: drop-outs, failures, retries (a stand-in server and executor: no training) -------------------

class _Server:
    """Plans a zero tensor per client; the executor's updates add one to it."""

    def plan(self, round_, clients):
        return [ClientTask(c, round_, {"w": torch.zeros(3)}) for c in clients]


def _world(**fed):
    cfg = load_config(None, {"fed.num_clients": 10, "fed.clients_per_round": 4, **{f"fed.{k}": v
                                                                                   for k, v in fed.items()}})
    return SimpleNamespace(cfg=cfg, num_examples=lambda c: c + 1, train_set=[None] * 55)


def _good(task):
    return ClientUpdate(task.client_id, task.round, {"w": torch.ones(3)}, num_examples=task.client_id + 1)


def _executor(failing=(), attempts=None):
    """Answers every task, except clients in ``failing`` whose update raises."""

    def update(task):
        if task.client_id in failing:
            raise RuntimeError("disk full")
        return _good(task)

    def execute(tasks):
        if attempts is not None:
            attempts.append([t.client_id for t in tasks])
        return [answer_or_failure(update, t) for t in tasks]

    return execute


def test_failure_free_round_is_the_plain_sample():
    result = run_round(_world(), _Server(), _executor(), 3)
    assert result.clients == sample_clients(0, 3, 10, 4) and [u.client_id for u in result.updates] == result.clients
    assert result.failures == {} and result.retried == [] and result.log() == {}


def test_failing_client_is_logged_with_its_reason_and_the_round_goes_on():
    clients = sample_clients(0, 1, 10, 4)
    result = run_round(_world(), _Server(), _executor(failing={clients[1]}), 1)
    assert [u.client_id for u in result.updates] == [c for c in clients if c != clients[1]]
    assert result.failures[clients[1]].startswith("RuntimeError: disk full (at ")
    assert result.log()["failures"] == {str(clients[1]): result.failures[clients[1]]}
    assert not result.timed_out  # an error reply is an answer, not a timeout


def test_round_with_too_few_answers_is_retried_on_a_fresh_sample():
    first = sample_clients(0, 1, 10, 4)
    attempts = []
    result = run_round(_world(min_fit_fraction=1.0), _Server(), _executor(failing={first[0]}, attempts=attempts), 1)
    assert attempts[0] == first and result.clients == sample_clients(0, 1, 10, 4, attempt=1) != first
    assert result.retried == [{first[0]: result.retried[0][first[0]]}]
    assert result.log()["retries"] == 1 and set(result.log()["retried_failures"][0]) == {str(first[0])}


def test_round_that_never_gets_enough_answers_is_a_clear_error():
    with pytest.raises(RoundFailedError, match=r"round 2: fewer than 2 of 4 .* 3 attempts .*min_fit_fraction"):
        run_round(_world(max_round_retries=2), _Server(), _executor(failing=set(range(10))), 2)


def test_dropout_is_seeded_per_seed_round_attempt_and_client():
    draws = [drops_out(0, r, 0, c, 0.3) for r in range(1, 30) for c in range(10)]
    assert draws == [drops_out(0, r, 0, c, 0.3) for r in range(1, 30) for c in range(10)]
    assert 0.2 < sum(draws) / len(draws) < 0.4
    assert draws != [drops_out(1, r, 0, c, 0.3) for r in range(1, 30) for c in range(10)]
    world = _world(dropout=0.3)
    result = run_round(world, _Server(), _executor(), 1)
    dropped = {c for c in sample_clients(0, 1, 10, 4) if drops_out(0, 1, 0, c, 0.3)}
    assert set(result.failures) == dropped and all(r.startswith("dropped out") for r in result.failures.values())
    assert result.timed_out == bool(dropped) and result.wait_seconds(300.0) == (300.0 if dropped else 0.0)


# --- update validation --------------------------------------------------------------------------------------

def _task_and_update():
    task = ClientTask(2, 1, {"a": torch.zeros(2, 3), "0.up": torch.zeros(4, 5)})
    update = ClientUpdate(2, 1, {"a": torch.full((2, 3), 0.1), "0.up": torch.zeros(4, 5)}, num_examples=7)
    return task, update


@pytest.mark.parametrize("corrupt, match", [
    (lambda u: u.tensors["a"].__setitem__((0, 0), float("nan")), "'a' has non-finite"),
    (lambda u: u.tensors["a"].__setitem__((1, 2), float("-inf")), "'a' has non-finite"),
    (lambda u: u.tensors.__setitem__("a", torch.zeros(3, 2)), r"'a' has shape \(3, 2\).*expected \(2, 3\)"),
    (lambda u: u.tensors.__setitem__("a", torch.zeros(2, 3, dtype=torch.float16)), "dtype torch.float16"),
    (lambda u: u.tensors.__setitem__("b", torch.zeros(1)), "unexpected tensor 'b'"),
    (lambda u: u.tensors.clear(), "update carries no tensors"),
    (lambda u: u.tensors["a"].add_(1e6), r"norm 2.45e\+06 exceeds fed.max_update_norm=100"),
    (lambda u: setattr(u, "num_examples", 10**9), "claims num_examples=1000000000, but the client holds 7"),
    (lambda u: setattr(u, "payload", {"rescale": [1.0, float("nan")]}), "payload .* non-finite"),
    (lambda u: setattr(u, "round", 2), "round 2; the task was for client 2, round 1"),
])
def test_bad_update_is_rejected_with_its_reason(corrupt, match):
    task, update = _task_and_update()
    assert validate_update(task, update, num_examples=7, max_norm=MAX_NORM) is None
    corrupt(update)
    reason = validate_update(task, update, num_examples=7, max_norm=MAX_NORM)
    assert reason is not None and re.search(match, reason), reason


def test_update_may_return_a_subset_of_what_it_was_sent():
    task, update = _task_and_update()
    update.tensors.pop("a")  # FLUX uploads only the experts it tuned, not the scored or merged ones
    assert validate_update(task, update, num_examples=7) is None


def test_expert_slices_are_checked_against_the_fused_tensor_they_come_from():
    task = ClientTask(0, 1, {"0.up": torch.zeros(4, 5)})
    ok = ClientUpdate(0, 1, {"0.3.up": torch.ones(5)}, num_examples=1)
    assert validate_update(task, ok, num_examples=1) is None
    assert "unexpected tensor '0.4.up'" in validate_update(task, ClientUpdate(0, 1, {"0.4.up": torch.ones(5)},
                                                                              num_examples=1))
    assert "shape (6,)" in validate_update(task, ClientUpdate(0, 1, {"0.1.up": torch.ones(6)}, num_examples=1))


def test_expert_slices_echo_their_fused_tensor_beside_other_tensors():
    """Expert methods send fused expert tensors and attention LoRA, and upload expert slices plus the LoRA."""
    task = ClientTask(0, 1, {"0.up": torch.zeros(4, 5), "1.up": torch.zeros(4, 5), "attention/q": torch.zeros(2)})
    update = ClientUpdate(0, 1, {"0.1.up": torch.ones(5), "attention/q": torch.ones(2)}, num_examples=1)
    assert validate_update(task, update, num_examples=1) is None  # no expert of layer 1 trained: fine


# --- real methods: a bad client changes nothing, survivors aggregate exactly -------------------------------

CORRUPTIONS = {
    "nan": lambda u: next(iter(u.tensors.values())).view(-1).__setitem__(0, float("nan")),
    "wrong shape": lambda u: u.tensors.update({k: torch.zeros(v.shape[0] + 1, *v.shape[1:], dtype=v.dtype)
                                               for k, v in list(u.tensors.items())[:1]}),
    "huge norm": lambda u: next(iter(u.tensors.values())).add_(1e4),
    "inflated count": lambda u: setattr(u, "num_examples", 10**9),
}


@pytest.mark.parametrize("method", ["fedit", "flame", "flux"])
def test_bad_update_leaves_the_global_model_as_the_others_make_it(method):
    fed = Federation.from_config(_cfg(method, **{"fed.max_update_norm": MAX_NORM}))
    spec = get_method(method)
    client = spec.client(fed, fed.cfg.method_args)
    tasks = spec.server(fed, fed.cfg.method_args).plan(1, [0, 1, 2])
    good = [client.update(t) for t in tasks]

    reference = spec.server(fed, fed.cfg.method_args)
    reference.plan(1, [0, 1, 2])
    reference.aggregate(1, copy.deepcopy(good[:2]))
    for name, corrupt in CORRUPTIONS.items():
        bad = copy.deepcopy(good[2])
        corrupt(bad)
        server = spec.server(fed, fed.cfg.method_args)
        server.plan(1, [0, 1, 2])
        updates, failures = screen(fed, server, tasks, [*copy.deepcopy(good[:2]), bad])
        assert set(failures) == {2} and failures[2].startswith("rejected: "), (name, failures)
        server.aggregate(1, updates)
        assert _same(server.state_dict(), reference.state_dict()), name


def _same(a, b) -> bool:
    """Exact equality of nested server state (NaN equal to NaN: FLUX keeps NaN for experts never measured)."""
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0)))
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_fedit_averages_the_survivors_exactly():
    fed = Federation.from_config(_cfg(**{"fed.clients_per_round": 3}))
    spec = get_method("fedit")
    server, client = spec.server(fed, fed.cfg.method_args), spec.client(fed, fed.cfg.method_args)
    clients = sample_clients(0, 1, 4, 3)

    def execute(tasks):
        return [ClientFailure(t.client_id, "gone") if t.client_id == clients[1] else client.update(t) for t in tasks]

    result = run_round(fed, server, execute, 1)
    a, b = result.updates
    assert [a.client_id, b.client_id] == [clients[0], clients[2]] and result.failures == {clients[1]: "gone"}
    server.aggregate(1, result.updates)
    na, nb = len(fed.client_data(a.client_id)), len(fed.client_data(b.client_id))
    for key, value in server.global_state.items():
        expected = (na * a.tensors[key].double() + nb * b.tensors[key].double()) / (na + nb)
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)


# --- end to end ----------------------------------------------------------------------------------------------

def test_run_with_a_failing_client_and_dropouts_logs_them_prices_the_timeout_and_plots(tmp_path):
    from fedmoe.plots import plot_failures

    cfg = _cfg(**{"fed.rounds": 2, "fed.num_clients": 4, "fed.clients_per_round": 3, "fed.dropout": 0.3})

    def flaky(spec, fed):
        execute = in_process_executor(spec, fed)

        def run_tasks(tasks):
            answers = execute(tasks)
            return [ClientFailure(a.client_id, "killed") if a.client_id == 0 else a for a in answers]

        return run_tasks

    folder = run_with(cfg, flaky, out_dir=tmp_path, progress=False)
    rounds = load_rounds(folder)[1:]
    for r in rounds:
        attempt = r.get("retries", 0)  # the record's clients are those of the attempt that went through
        assert r["clients"] == sample_clients(0, r["round"], 4, 3, attempt)
        dropped = {c for c in r["clients"] if drops_out(0, r["round"], attempt, c, 0.3)}
        expected = {str(c): "dropped out (fed.dropout=0.3)" for c in dropped}
        if 0 in r["clients"] and 0 not in dropped:
            expected["0"] = "killed"
        assert r.get("failures", {}) == expected
        assert set(r["client_seconds"]) == {str(c) for c in r["clients"]} - set(expected)
        assert (r["round_seconds"] >= cfg.fed.timeout_seconds * (attempt + bool(dropped))) and (
            r["round_seconds"] < cfg.fed.timeout_seconds) == (attempt == 0 and not dropped)
    assert any(r.get("failures") for r in rounds)
    ax = plot_failures(folder).axes[0]
    assert [p.get_height() for p in ax.patches] == [len(r.get("failures", {})) for r in rounds]


def test_second_run_into_a_locked_folder_is_a_clear_error(tmp_path):
    cfg = _cfg(**{"fed.rounds": 1})
    holder = RunFolder(tmp_path / "x")
    holder.lock()
    with pytest.raises(RunFolderLockedError, match=r"x is being written by another run .*another run name or out_dir"):
        run(cfg, out_dir=tmp_path, run_name="x", progress=False)
    assert not (tmp_path / "x" / "config.yaml").exists()
    holder.unlock()
    folder = run(cfg, out_dir=tmp_path, run_name="x", progress=False)
    assert [r["round"] for r in load_rounds(folder)] == [0, 1]
    RunFolder(folder).lock()  # the finished run released it


def test_rounds_failing_every_attempt_end_the_run_with_a_clear_error(tmp_path):
    cfg = _cfg(**{"fed.rounds": 1, "fed.max_round_retries": 1})

    def broken(spec, fed):
        return lambda tasks: [ClientFailure(t.client_id, "OOM") for t in tasks]

    with pytest.raises(RoundFailedError, match="round 1: fewer than 1 of 2 .* 2 attempts"):
        run_with(cfg, broken, out_dir=tmp_path, run_name="x", progress=False)
    RunFolder(tmp_path / "x").lock()  # a failed run released its folder too


def test_lower_rank_upload_of_a_global_factor_is_checked_against_its_leading_block():
    task, glob = ClientTask(0, 1, {}), {"lora_A": torch.zeros(8, 5)}
    assert validate_update(task, ClientUpdate(0, 1, {"lora_A": torch.ones(2, 5)}, num_examples=1),
                           global_state=glob, max_norm=4.0) is None
    assert "shape (2, 6)" in validate_update(task, ClientUpdate(0, 1, {"lora_A": torch.ones(2, 6)}, num_examples=1),
                                             global_state=glob)
    assert "norm 3.16" in validate_update(task, ClientUpdate(0, 1, {"lora_A": torch.ones(2, 5)}, num_examples=1),
                                          global_state=glob, max_norm=3.0)
