"""Flower as the distributed engine: the same method and runner behind a ServerApp and a ClientApp.

The ServerApp's ``main`` runs :func:`fedmoe.experiment.run` with an executor that turns each
:class:`ClientTask` into a Flower ``Message`` (tensors in an ``ArrayRecord``, the plan as JSON in a
``ConfigRecord``), sends it to a SuperNode with ``grid.send_and_receive`` and turns the replies
back into :class:`ClientUpdate` objects. The ClientApp builds only the method's client half (never its
server) to call ``update``. Where the data lives is the Flower run-config key ``client-data`` (a property of
the deployment, not of the experiment, so it is not part of the run config and its digest):

- ``server`` (default): clients are virtual. Every ClientApp rebuilds the whole :class:`Federation` from the
  config and serves whichever client id a task names, so any SuperNode can serve it (as in Flower's
  simulation of many clients on few nodes).
- ``node``: each SuperNode is one client and owns its data, named by its ``--node-config``
  (:mod:`fedmoe.fl.node_data`). The ServerApp waits for ``fed.num_clients`` SuperNodes, asks each one to
  describe itself (a ``query`` message answered with its example count and device, never its data), numbers
  the clients in node-id order, samples among them and sends client ``c``'s tasks to its node only, with
  every client's device profile. The ClientApp loads only its node's data. The server keeps the public test
  set for evaluation.

The same apps run in Flower's simulation engine (:func:`run_flower_simulation`, Ray bound to
127.0.0.1), with ``flwr run .`` (the apps below are named in ``pyproject.toml``), and in a
deployment of SuperLink + SuperNodes (see the README recipe).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from logging import INFO
from pathlib import Path

# Before flwr is imported: it reads these once. No telemetry leaves the machine; no runtime installs.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import torch  # noqa: E402, F401  (ArrayRecord.to_torch_state_dict needs torch imported in this process)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.logger import log  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedmoe.config import ConfigError, RunConfig, from_dict, load_config  # noqa: E402
from fedmoe.errors import FedmoeError  # noqa: E402
from fedmoe.experiment import check_config, run, run_id  # noqa: E402
from fedmoe.fl.contract import (  # noqa: E402
    ClientFailure,
    ClientTask,
    ClientUpdate,
    task_from_json,
    task_to_json,
    update_from_json,
    update_to_json,
)
from fedmoe.fl.devices import DeviceProfile  # noqa: E402
from fedmoe.fl.federation import Federation, client_devices  # noqa: E402
from fedmoe.fl.node_data import (  # noqa: E402
    NodeRoster,
    describe_node,
    load_node_examples,
    parse_node_config,
)
from fedmoe.methods.base import get_method  # noqa: E402
from fedmoe.results import RunFolder  # noqa: E402

LOOPBACK = "127.0.0.1"
DESCRIBE = "query"  # message type of the server's first question to each SuperNode (client-data=node)
NODE_WAIT_S = 300.0  # how long the ServerApp waits for fed.num_clients SuperNodes (run config: node-wait-s)


def _pack(tensors: dict[str, torch.Tensor], meta: str, devices: str | None = None) -> RecordDict:
    arrays = ArrayRecord({k: v.detach().contiguous() for k, v in tensors.items()}) if tensors else ArrayRecord()
    content = RecordDict({"tensors": arrays, "meta": ConfigRecord({"json": meta})})
    if devices is not None:
        content["devices"] = ConfigRecord({"json": devices})
    return content


def _unpack(content: RecordDict) -> tuple[dict[str, torch.Tensor], str]:
    arrays = content["tensors"]
    tensors = arrays.to_torch_state_dict() if len(arrays) else {}
    return tensors, str(content["meta"]["json"])


def flower_executor(grid: Grid, timeout: float | None = None):
    """An executor (see :mod:`fedmoe.experiment`) that runs tasks on the grid's SuperNodes, client ``c`` on the
    ``(c mod n)``-th connected node (virtual clients, ``client-data=server``); an error reply is that
    client's :class:`ClientFailure` (a task without a reply is left to the runner, which logs it)."""

    def execute(tasks: list[ClientTask]) -> list[ClientUpdate | ClientFailure]:
        node_ids = sorted(grid.get_node_ids())
        if not node_ids:
            raise FedmoeError("no SuperNode is connected to the SuperLink; start at least one flower-supernode")
        return _exchange(grid, tasks, lambda c: node_ids[c % len(node_ids)], None, timeout)

    return execute


def node_executor(grid: Grid, roster: NodeRoster, devices: list[DeviceProfile], timeout: float | None = None):
    """An executor for ``client-data=node``: client ``c``'s task goes to its own SuperNode
    ``roster.node_ids[c]`` with every client's device profile; a node that died or failed is that client's
    :class:`ClientFailure` (the SuperLink answers a message to an offline node with an error)."""
    profiles = json.dumps([dataclasses.asdict(d) for d in devices])
    return lambda tasks: _exchange(grid, tasks, lambda c: roster.node_ids[c], profiles, timeout)


def _exchange(grid: Grid, tasks: list[ClientTask], node_of, devices: str | None, timeout: float | None
              ) -> list[ClientUpdate | ClientFailure]:
    """Send each task to ``node_of(client)`` and turn the replies into updates or failures."""
    messages = [
        Message(content=_pack(task.tensors, task_to_json(task), devices), dst_node_id=node_of(task.client_id),
                message_type="train")
        for task in tasks
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))  # sending sets each message's id
    client_of = {m.metadata.message_id: t.client_id for m, t in zip(messages, tasks, strict=True)}
    answers: list[ClientUpdate | ClientFailure] = []
    for reply in replies:
        client = client_of[reply.metadata.reply_to_message_id]
        if reply.has_error():
            answers.append(ClientFailure(client, f"Flower error reply: {reply.error.reason}"))
        else:
            tensors, meta = _unpack(reply.content)
            answers.append(update_from_json(meta, tensors))
    return answers


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S, poll_s: float = 1.0) -> list[int]:
    """The sorted ids of ``count`` connected SuperNodes (the lowest ids when more are connected), waiting up to
    ``timeout_s`` seconds for them to connect."""
    deadline = time.monotonic() + timeout_s
    while len(ids := sorted(grid.get_node_ids())) < count:
        if time.monotonic() >= deadline:
            raise FedmoeError(
                f"only {len(ids)} of fed.num_clients={count} SuperNodes connected within {timeout_s:.0f} s; start "
                "more flower-supernode processes (each with its own --node-config data-file=...), or lower "
                "fed.num_clients, or raise the run config's node-wait-s")
        time.sleep(poll_s)
    return ids[:count]


def describe_nodes(grid: Grid, node_ids: list[int], timeout: float | None = None) -> NodeRoster:
    """Ask each SuperNode for its example count and device (:func:`fedmoe.fl.node_data.describe_node`); a node
    that cannot answer (no data, a bad --node-config) ends the run with its reason."""
    messages = [Message(content=RecordDict({"describe": ConfigRecord({})}), dst_node_id=n, message_type=DESCRIBE)
                for n in node_ids]
    answers, errors = {}, {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors[node] = reply.error.reason
        else:
            answers[node] = dict(reply.content["describe"])
    errors.update({n: "no reply" for n in node_ids if n not in answers and n not in errors})
    if errors:
        raise FedmoeError(f"SuperNodes could not describe their data: {errors}; fix each node's --node-config "
                          "(data-file=\"/path/client.jsonl\" or partition-id=N, optional device=...) and restart it")
    return NodeRoster.from_replies(answers)


def node_federation(cfg: RunConfig, roster: NodeRoster) -> Federation:
    """The server's federation for ``roster``: node-described counts and devices (the fleet assigns a device to
    a node that names none), the public test set, no client data."""
    fleet_devices = client_devices(cfg, len(roster.node_ids))
    return Federation.for_nodes(cfg, roster.num_examples, roster.device_profiles(fleet_devices))


CLIENT_DATA = ("server", "node")


def client_data_mode(context: Context) -> str:
    """Where clients' data lives, from the Flower run-config key ``client-data`` (default ``server``)."""
    mode = str(context.run_config.get("client-data", "server"))
    if mode not in CLIENT_DATA:
        raise ConfigError(f"Flower run config client-data={mode!r} is invalid: expected one of {CLIENT_DATA} "
                          "(fix: --run-config 'client-data=\"node\"' when each SuperNode names its own data)")
    return mode


def config_from_context(context: Context) -> RunConfig:
    """The run config named by a Flower run config (``config`` path and ``overrides`` string)."""
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split(";") if o.strip()]
    return load_config(rc.get("config") or None, overrides)


@functools.lru_cache(maxsize=2)
def _client_half(cfg_json: str):
    """This process's client half of the run's method (built once per config; never a server half)."""
    cfg = from_dict(json.loads(cfg_json))
    torch.set_num_threads(cfg.threads)
    return get_method(cfg.method).client(Federation.from_config(cfg), cfg.method_args)


@functools.lru_cache(maxsize=2)
def _node_client_half(cfg_json: str, node_config_json: str, devices_json: str, client_id: int):
    """The client half of a SuperNode that owns its data (``client-data=node``): its own examples only."""
    cfg = from_dict(json.loads(cfg_json))
    torch.set_num_threads(cfg.threads)
    examples = load_node_examples(parse_node_config(json.loads(node_config_json)), cfg)
    devices = [DeviceProfile(**d) for d in json.loads(devices_json)]
    return get_method(cfg.method).client(Federation.for_node(cfg, client_id, examples, devices), cfg.method_args)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp running the method's client ``update`` (and, with ``client-data=node``, answering the
    server's describe query from its node's own data); the config comes from ``cfg`` or the run config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run_cfg = cfg if cfg is not None else config_from_context(context)
        cfg_json = json.dumps(run_cfg.to_dict(), sort_keys=True)
        tensors, meta = _unpack(msg.content)
        task = task_from_json(meta, tensors)
        if client_data_mode(context) == "node":
            client = _node_client_half(cfg_json, json.dumps(dict(context.node_config), sort_keys=True),
                                       str(msg.content["devices"]["json"]), task.client_id)
        else:
            client = _client_half(cfg_json)
        update = client.update(task)
        return Message(content=_pack(update.tensors, update_to_json(update)), reply_to=msg)

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        run_cfg = cfg if cfg is not None else config_from_context(context)
        spec = parse_node_config(context.node_config)
        reply = describe_node(spec, load_node_examples(spec, run_cfg))
        return Message(content=RecordDict({"describe": ConfigRecord(reply)}), reply_to=msg)

    return app


def make_server_app(cfg: RunConfig | None = None, *, out_dir: str | Path = "results", run_name: str | None = None,
                    progress: bool = False) -> ServerApp:
    """A ServerApp whose ``main`` runs the experiment through :func:`flower_executor`, or, with
    ``client-data=node``, on the SuperNodes' own data through :func:`node_executor`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = check_config(cfg if cfg is not None else config_from_context(context))
        out = context.run_config.get("out-dir", out_dir) if cfg is None else out_dir
        if client_data_mode(context) != "node":
            run(run_cfg, lambda spec, fed: flower_executor(grid), out_dir=out, run_name=run_name, progress=progress)
            return
        if run_cfg.method == "central":
            raise ConfigError("config key method=central pools every client's data on one machine, which "
                              "client-data=node rules out (fix: another method, or client-data=\"server\")")
        wait_s = float(context.run_config.get("node-wait-s", NODE_WAIT_S))
        roster = describe_nodes(grid, wait_for_nodes(grid, run_cfg.fed.num_clients, wait_s))
        fed = node_federation(run_cfg, roster)
        for c, node in enumerate(roster.node_ids):
            log(INFO, "fedmoe: client %d is SuperNode %d (%d examples, device %s)", c, node,
                roster.num_examples[c], fed.devices[c].name)
        # its own folder name: the same config on the nodes' data is another experiment than on the server's
        run(run_cfg, lambda spec, _: node_executor(grid, roster, fed.devices), out_dir=out,
            run_name=run_name or node_run_id(run_cfg), progress=progress, federation=fed)

    return app


def node_run_id(cfg: RunConfig) -> str:
    """The results folder name of ``cfg`` run on SuperNodes that own their data (``client-data=node``)."""
    return run_id(cfg) + "-nodes"


def loopback_environment() -> None:
    """Environment that keeps Ray on 127.0.0.1 (Flower's own settings are made when this module is imported)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def ray_backend_config(num_cpus: int = 2) -> dict:
    """Flower's Ray backend config with Ray bound to loopback and no dashboard."""
    return {
        "init_args": {"_node_ip_address": LOOPBACK, "include_dashboard": False, "num_cpus": num_cpus,
                      "log_to_driver": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }


def run_flower_simulation(cfg: RunConfig, *, num_supernodes: int = 2, out_dir: str | Path = "results",
                          run_name: str | None = None, num_cpus: int = 2) -> Path:
    """Run ``cfg`` in Flower's simulation engine (Ray on 127.0.0.1) and return the results folder."""
    from flwr.simulation import run_simulation

    loopback_environment()
    name = run_name or run_id(cfg) + "-flower"
    run_simulation(
        server_app=make_server_app(cfg, out_dir=out_dir, run_name=name),
        client_app=make_client_app(cfg),
        num_supernodes=num_supernodes,
        backend_config=ray_backend_config(num_cpus),
    )
    folder = RunFolder(Path(out_dir) / name)
    if not folder.has_summary():
        raise FedmoeError(f"the Flower simulation ended without finishing the run in {folder.path}; see the log above")
    return folder.path


# Apps named in pyproject.toml's [tool.flwr.app.components] for `flwr run .` and deployments.
server_app = make_server_app()
client_app = make_client_app()
