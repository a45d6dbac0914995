"""Client data owned by a Flower SuperNode (Flower run config ``client-data=node``): what a node holds, and the server's roster.

A SuperNode names its data in its ``--node-config`` (Flower parses ``key=value`` pairs into
``Context.node_config``)::

    data-file="/data/client.jsonl"      # a local file in a published schema (see fedmoe.data.loaders)
    partition-id=2 num-partitions=3     # or: one partition of the run's offline benchmark (for demos)
    device="rtx-3060-12gb"              # optional: the node's device profile (fedmoe.fl.devices)

:func:`parse_node_config` checks it, :func:`load_node_examples` loads the node's examples (and nothing else),
and :func:`describe_node` is the node's answer to the server's first query: its example count and device.
The server never sees the data: :class:`NodeRoster` maps the connected nodes (client id = position among the
sorted node ids) to those counts and devices, and :meth:`NodeRoster.device_profiles` gives a node that names
no device the one the fleet assigns to its client id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmoe.config import RunConfig
from fedmoe.data.records import Example
from fedmoe.fl.devices import DEVICES, DeviceProfile, get_device

DATA_FILE, PARTITION_ID, NUM_PARTITIONS, DEVICE = "data-file", "partition-id", "num-partitions", "device"
NODE_KEYS = (DATA_FILE, PARTITION_ID, NUM_PARTITIONS, DEVICE)
EXAMPLE = f'--node-config \'{DATA_FILE}="/data/client.jsonl" {DEVICE}="rtx-3060-12gb"\''


class NodeConfigError(ValueError):
    """A SuperNode's ``--node-config`` that does not name its data properly (the message names the fix)."""


@dataclass(frozen=True)
class NodeSpec:
    """What a SuperNode's config names: a ``data_file``, or partition ``partition_id`` of ``num_partitions``
    of the offline benchmark; and its ``device`` profile name (``None``: the fleet assigns one)."""

    data_file: str | None = None
    partition_id: int | None = None
    num_partitions: int | None = None
    device: str | None = None


def parse_node_config(node_config: Mapping[str, Any]) -> NodeSpec:
    """The :class:`NodeSpec` of a SuperNode's ``Context.node_config``; a :class:`NodeConfigError` for an unknown
    key, a value of the wrong type, no data or two kinds of data, or an unknown device."""
    unknown = sorted(set(node_config) - set(NODE_KEYS))
    if unknown:
        raise NodeConfigError(f"unknown SuperNode --node-config key {unknown[0]!r}; valid keys: {list(NODE_KEYS)} "
                              f"(fix: e.g. {EXAMPLE})")
    data_file, device = node_config.get(DATA_FILE), node_config.get(DEVICE)
    pid, parts = node_config.get(PARTITION_ID), node_config.get(NUM_PARTITIONS)
    if (data_file is None) == (pid is None):
        what = "names both" if data_file is not None else "names neither"
        raise NodeConfigError(f"SuperNode --node-config {what} {DATA_FILE} and {PARTITION_ID}: give exactly one "
                              f"(fix: e.g. {EXAMPLE}, or {PARTITION_ID}=0 for a demo partition)")
    for key, value in ((DATA_FILE, data_file), (DEVICE, device)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise NodeConfigError(f"SuperNode --node-config {key}={value!r} must be a non-empty quoted string "
                                  f"(fix: e.g. {EXAMPLE})")
    for key, value, low in ((PARTITION_ID, pid, 0), (NUM_PARTITIONS, parts, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise NodeConfigError(f"SuperNode --node-config {key}={value!r} must be an integer >= {low} "
                                  f"(fix: e.g. {PARTITION_ID}=0 {NUM_PARTITIONS}=3)")
    if parts is not None and pid is None:
        raise NodeConfigError(f"SuperNode --node-config {NUM_PARTITIONS} applies only with {PARTITION_ID} "
                              f"(fix: drop it, or give {PARTITION_ID}=N)")
    if pid is not None and parts is not None and pid >= parts:
        raise NodeConfigError(f"SuperNode --node-config {PARTITION_ID}={pid} is out of range for "
                              f"{NUM_PARTITIONS}={parts} (fix: use 0..{parts - 1})")
    if device is not None and device not in DEVICES:
        raise NodeConfigError(f"SuperNode --node-config {DEVICE}={device!r} is not a device profile; known: "
                              f"{sorted(DEVICES)} (fix: e.g. {DEVICE}=\"rtx-3060-12gb\")")
    return NodeSpec(data_file, pid, parts, device)


def load_node_examples(spec: NodeSpec, cfg: RunConfig) -> list[Example]:
    """The node's training examples: every row of its data file (its published schema ``data.kind`` when the run
    sets it, else inferred from the columns), or its partition of the run's data (``num_partitions`` defaults to
    ``fed.num_clients``)."""
    if spec.data_file is not None:
        from fedmoe.data.loaders import load_records

        path = Path(spec.data_file).expanduser()
        if not path.is_file():
            raise NodeConfigError(f"SuperNode --node-config {DATA_FILE}={spec.data_file!r}: no such file on this "
                                  "node (fix: give the absolute path of a .jsonl/.json/.csv/.parquet file)")
        return load_records(path, kind=cfg.data.kind, seed=cfg.data_seed)
    from fedmoe.data.partition import partition
    from fedmoe.data.task_data import load_task_data

    parts = spec.num_partitions or cfg.fed.num_clients
    if spec.partition_id >= parts:
        raise NodeConfigError(f"SuperNode --node-config {PARTITION_ID}={spec.partition_id} is out of range for "
                              f"{parts} partitions (fed.num_clients) (fix: use 0..{parts - 1}, or set "
                              f"{NUM_PARTITIONS})")
    train, _ = load_task_data(cfg.data, seed=cfg.data_seed)
    d = cfg.data
    return partition(train, parts, scheme=d.partition, alpha=d.alpha, domains_per_client=d.domains_per_client,
                     seed=cfg.data_seed)[spec.partition_id]


def describe_node(spec: NodeSpec, examples: list[Example]) -> dict[str, Any]:
    """A node's reply to the server's describe query: its example count and device name ("" for none)."""
    return {"num_examples": len(examples), "device": spec.device or ""}


@dataclass(frozen=True)
class NodeRoster:
    """The SuperNodes a run trains on: client ``c`` is node ``node_ids[c]``, holding ``num_examples[c]``
    examples on device ``devices[c]`` ("" when the node named none)."""

    node_ids: list[int]
    num_examples: list[int]
    devices: list[str]

    @classmethod
    def from_replies(cls, replies: Mapping[int, Mapping[str, Any]]) -> NodeRoster:
        """The roster of the describe replies {node id: reply}, clients numbered in node id order; a reply
        without a positive integer count or with an unknown device is a :class:`NodeConfigError`."""
        ids, counts, devices = sorted(replies), [], []
        for node in ids:
            reply = replies[node]
            count, device = reply.get("num_examples"), reply.get("device", "")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise NodeConfigError(f"SuperNode {node} describes num_examples={count!r}; a node must hold at "
                                      "least one training example (fix: check its data-file)")
            if device and device not in DEVICES:
                raise NodeConfigError(f"SuperNode {node} describes unknown device {device!r}; known: "
                                      f"{sorted(DEVICES)}")
            counts.append(count)
            devices.append(str(device))
        return cls(ids, counts, devices)

    def device_profiles(self, fleet_devices: list[DeviceProfile]) -> list[DeviceProfile]:
        """Each client's profile: the one its node named, else ``fleet_devices[c]`` (the fleet's assignment)."""
        return [get_device(name) if name else fleet_devices[c] for c, name in enumerate(self.devices)]

    def client_of(self, node_id: int) -> int:
        """The client id of SuperNode ``node_id``."""
        return self.node_ids.index(node_id)
