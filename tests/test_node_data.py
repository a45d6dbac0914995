"""SuperNodes that own their data (Flower run config client-data=node): node configs, the describe reply, the server's roster."""

import json

import pytest

from fedmoe.config import ConfigError, load_config
from fedmoe.data.offline import make_benchmark
from fedmoe.experiment import check_config, run_id
from fedmoe.fl.devices import get_device, get_fleet
from fedmoe.fl.node_data import (
    NodeConfigError,
    NodeRoster,
    NodeSpec,
    describe_node,
    load_node_examples,
    parse_node_config,
)
from fedmoe.fl.robust import assigned_examples


def _dolly_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DOLLY = [{"instruction": f"Say {i}", "context": "", "response": str(i), "category": "numbers"} for i in range(7)]


# --- the node's --node-config ---------------------------------------------------------------------------------

def test_parse_node_config_reads_a_data_file_or_a_partition_and_a_device():
    assert parse_node_config({"data-file": "/d/c.jsonl", "device": "rtx-3060-12gb"}) == \
        NodeSpec(data_file="/d/c.jsonl", device="rtx-3060-12gb")
    assert parse_node_config({"partition-id": 2, "num-partitions": 3}) == NodeSpec(partition_id=2, num_partitions=3)


@pytest.mark.parametrize(("node_config", "message"), [
    ({}, "names neither data-file and partition-id"),
    ({"data-file": "/d/c.jsonl", "partition-id": 0}, "names both data-file and partition-id"),
    ({"datafile": "/d/c.jsonl"}, "unknown SuperNode --node-config key 'datafile'"),
    ({"data-file": 3}, "data-file=3 must be a non-empty quoted string"),
    ({"data-file": " "}, "must be a non-empty quoted string"),
    ({"partition-id": -1}, "partition-id=-1 must be an integer >= 0"),
    ({"partition-id": "0"}, "partition-id='0' must be an integer >= 0"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions=0 must be an integer >= 1"),
    ({"partition-id": 3, "num-partitions": 3}, "partition-id=3 is out of range for num-partitions=3"),
    ({"data-file": "/d/c.jsonl", "num-partitions": 3}, "num-partitions applies only with partition-id"),
    ({"data-file": "/d/c.jsonl", "device": "rtx3060"}, "device='rtx3060' is not a device profile"),
])
def test_parse_node_config_names_each_problem_and_its_fix(node_config, message):
    with pytest.raises(NodeConfigError, match="fix") as err:
        parse_node_config(node_config)
    assert message in str(err.value)


def test_a_node_loads_only_its_own_file_in_a_published_schema(tmp_path):
    cfg = load_config(None, scale="smoke")
    examples = load_node_examples(NodeSpec(data_file=str(_dolly_file(tmp_path / "c.jsonl", DOLLY))), cfg)
    assert [ex.answer for ex in examples] == [str(i) for i in range(7)]
    assert {ex.domain for ex in examples} == {"numbers"}
    assert describe_node(NodeSpec(data_file="x", device="a100-80gb"), examples) == \
        {"num_examples": 7, "device": "a100-80gb"}
    assert describe_node(NodeSpec(data_file="x"), examples) == {"num_examples": 7, "device": ""}


def test_a_node_reads_its_file_as_the_runs_data_kind(tmp_path):
    from dataclasses import replace

    cfg = load_config(None, scale="smoke")
    path = _dolly_file(tmp_path / "c.jsonl", DOLLY)
    cfg = replace(cfg, data=replace(cfg.data, kind="gsm"))  # the kind the run names applies on the node too
    with pytest.raises(ValueError, match="gsm"):
        load_node_examples(NodeSpec(data_file=str(path)), cfg)


def test_a_missing_or_malformed_node_file_is_a_clear_error(tmp_path):
    cfg = load_config(None, scale="smoke")
    with pytest.raises(NodeConfigError, match=r"data-file='/no/such.jsonl': no such file on this node \(fix"):
        load_node_examples(NodeSpec(data_file="/no/such.jsonl"), cfg)
    bad = _dolly_file(tmp_path / "bad.jsonl", [{"instruction": "x", "context": "", "category": "c"}])
    with pytest.raises(ValueError, match="bad.jsonl"):
        load_node_examples(NodeSpec(data_file=str(bad)), cfg)


def test_demo_partitions_split_the_offline_benchmark_among_nodes():
    cfg = load_config(None, {"fed.num_clients": 3, "fed.clients_per_round": 3}, scale="smoke")
    parts = [load_node_examples(NodeSpec(partition_id=i), cfg) for i in range(3)]
    train, _ = make_benchmark(cfg.data.suite, n_train=cfg.data.n_train, n_test=cfg.data.n_test, seed=cfg.data_seed)
    assert sorted(ex.prompt for p in parts for ex in p) == sorted(ex.prompt for ex in train)
    assert all(parts)
    with pytest.raises(NodeConfigError, match=r"partition-id=3 is out of range for 3 partitions"):
        load_node_examples(NodeSpec(partition_id=3), cfg)


# --- the server's roster ------------------------------------------------------------------------------------

def test_roster_numbers_clients_in_node_id_order_and_maps_devices():
    roster = NodeRoster.from_replies({907: {"num_examples": 40, "device": ""},
                                      15: {"num_examples": 30, "device": "rtx-3090-24gb"}})
    assert roster.node_ids == [15, 907] and roster.num_examples == [30, 40]
    assert roster.client_of(907) == 1
    fleet = get_fleet("consumer").assign(2, 0)
    assert roster.device_profiles(fleet) == [get_device("rtx-3090-24gb"), fleet[1]]


@pytest.mark.parametrize(("reply", "message"), [
    ({"num_examples": 0, "device": ""}, "SuperNode 5 describes num_examples=0"),
    ({"num_examples": True, "device": ""}, "describes num_examples=True"),
    ({"device": ""}, "describes num_examples=None"),
    ({"num_examples": 3, "device": "gpu9000"}, "SuperNode 5 describes unknown device 'gpu9000'"),
])
def test_roster_rejects_a_bad_description(reply, message):
    with pytest.raises(NodeConfigError, match=message):
        NodeRoster.from_replies({5: reply})


def test_server_federation_holds_counts_and_devices_but_no_client_data():
    from fedmoe.engines.flower import node_federation

    cfg = check_config(load_config(None, {"fed.num_clients": 2, "fed.clients_per_round": 2}, scale="smoke"))
    roster = NodeRoster([15, 907], [30, 40], ["a100-80gb", ""])
    fed = node_federation(cfg, roster)
    assert [fed.num_examples(c) for c in (0, 1)] == [30, 40]
    assert [assigned_examples(fed, c) for c in (0, 1)] == [30, 40]  # what validate_update checks counts against
    assert fed.devices == [get_device("a100-80gb"), get_fleet(cfg.cost.fleet).assign(2, cfg.data_seed)[1]]
    assert fed.train_set == [] and len(fed.test_set) == cfg.data.n_test
    with pytest.raises(LookupError, match="client 1's data lives on its own SuperNode"):
        fed.client_data(1)


# --- the switch -----------------------------------------------------------------------------------------------

def test_client_data_switch_is_a_checked_flower_run_config_key():
    from types import SimpleNamespace

    from fedmoe.engines.flower import client_data_mode, node_run_id

    assert client_data_mode(SimpleNamespace(run_config={})) == "server"
    assert client_data_mode(SimpleNamespace(run_config={"client-data": "node"})) == "node"
    with pytest.raises(ConfigError, match=r"client-data='nodes' is invalid: expected one of \('server', 'node'\)"):
        client_data_mode(SimpleNamespace(run_config={"client-data": "nodes"}))
    cfg = load_config(None, {}, scale="smoke")
    assert node_run_id(cfg).endswith("-nodes") and node_run_id(cfg) != run_id(cfg)
