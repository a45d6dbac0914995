"""Flower as the distributed engine: the same method and runner behind a ServerApp and a ClientApp.

The ServerApp's ``main`` runs :func:`fedmoe.experiment.run` with an executor that turns each
:class:`ClientTask` into a Flower ``Message`` (tensors in an ``ArrayRecord``, the plan as JSON in a
``ConfigRecord``), sends it to a SuperNode with ``grid.send_and_receive`` and turns the replies
back into :class:`ClientUpdate` objects. The ClientApp rebuilds the :class:`Federation` from the
same config and builds only the method's client half (never its server) to call ``update``. Clients are
virtual: the task names its client id, so any SuperNode can serve it (as in Flower's simulation of many
clients on few nodes).

The same apps run in Flower's simulation engine (:func:`run_flower_simulation`, Ray bound to
127.0.0.1), with ``flwr run .`` (the apps below are named in ``pyproject.toml``), and in a
deployment of SuperLink + SuperNodes (see the README recipe).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

# Before flwr is imported: it reads these once. No telemetry leaves the machine; no runtime installs.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import torch  # noqa: E402, F401  (ArrayRecord.to_torch_state_dict needs torch imported in this process)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedmoe.config import RunConfig, from_dict, load_config  # noqa: E402
from fedmoe.experiment import run, run_id  # noqa: E402
from fedmoe.fl.contract import (  # noqa: E402
    ClientFailure,
    ClientTask,
    ClientUpdate,
    task_from_json,
    task_to_json,
    update_from_json,
    update_to_json,
)
from fedmoe.fl.federation import Federation  # noqa: E402
from fedmoe.methods.base import get_method  # noqa: E402
from fedmoe.results import RunFolder  # noqa: E402

LOOPBACK = "127.0.0.1"


def _pack(tensors: dict[str, torch.Tensor], meta: str) -> RecordDict:
    arrays = ArrayRecord({k: v.detach().contiguous() for k, v in tensors.items()}) if tensors else ArrayRecord()
    return RecordDict({"tensors": arrays, "meta": ConfigRecord({"json": meta})})


def _unpack(content: RecordDict) -> tuple[dict[str, torch.Tensor], str]:
    arrays = content["tensors"]
    tensors = arrays.to_torch_state_dict() if len(arrays) else {}
    return tensors, str(content["meta"]["json"])


def flower_executor(grid: Grid, timeout: float | None = None):
    """An executor (see :mod:`fedmoe.experiment`) that runs tasks on the grid's SuperNodes; an error reply is
    that client's :class:`ClientFailure` (a task without a reply is left to the runner, which logs it)."""

    def execute(tasks: list[ClientTask]) -> list[ClientUpdate | ClientFailure]:
        node_ids = sorted(grid.get_node_ids())
        if not node_ids:
            raise RuntimeError("no SuperNode is connected to the SuperLink; start at least one flower-supernode")
        messages = [
            Message(
                content=_pack(task.tensors, task_to_json(task)),
                dst_node_id=node_ids[task.client_id % len(node_ids)],
                message_type="train",
            )
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

    return execute


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


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp running the method's client ``update``; the config comes from ``cfg`` or the run config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run_cfg = cfg if cfg is not None else config_from_context(context)
        client = _client_half(json.dumps(run_cfg.to_dict(), sort_keys=True))
        tensors, meta = _unpack(msg.content)
        update = client.update(task_from_json(meta, tensors))
        return Message(content=_pack(update.tensors, update_to_json(update)), reply_to=msg)

    return app


def make_server_app(cfg: RunConfig | None = None, *, out_dir: str | Path = "results", run_name: str | None = None,
                    progress: bool = False) -> ServerApp:
    """A ServerApp whose ``main`` runs the experiment through :func:`flower_executor`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg if cfg is not None else config_from_context(context)
        out = context.run_config.get("out-dir", out_dir) if cfg is None else out_dir
        run(run_cfg, lambda spec, fed: flower_executor(grid), out_dir=out, run_name=run_name, progress=progress)

    return app


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
        raise RuntimeError(f"the Flower simulation ended without finishing the run in {folder.path}; see the log above")
    return folder.path


# Apps named in pyproject.toml's [tool.flwr.app.components] for `flwr run .` and deployments.
server_app = make_server_app()
client_app = make_client_app()
