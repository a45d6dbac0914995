"""The kit's Flower apps run in a real deployment: a SuperLink and two SuperNodes over TLS on 127.0.0.1.

The test generates a throwaway CA and a server certificate, starts ``flower-superlink`` and two
``flower-supernode`` processes (flwr 1.41 serves Fleet, Control and Runtime APIs on one HTTPS port,
``--host``/``--port``), submits a copy of the app with ``flwr run <app> <connection> --stream`` where
the SuperLink connection lives in ``$FLWR_HOME/config.toml`` (inside ``tmp_path``), and checks that the
run finished with the in-process engine's numbers while every listening socket stayed on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.engines.flower import node_run_id
from fedmoe.experiment import run_id
from fedmoe.moe.zoo import default_cache_dir
from fedmoe.results import SUMMARY_FILE, load_rounds

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::1"}
OVERRIDES = ["scale=smoke", "fed.rounds=2"]
CONNECTION = "fedmoe-tls"
TIMEOUT_S = 360.0  # hang guard: the run took 3-4 min on 2 cores shared with other jobs (est. ~75 s idle)


def write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmoe test CA")])
    ca_cert = issue("fedmoe test CA", ca_key, ca_name, ca_key, ca=True)
    server_cert = issue("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def tls_peer_name(port: int, ca: Path) -> str:
    """Common name of the certificate served on 127.0.0.1:``port``, verified against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return dict(item[0] for item in tls.getpeercert()["subject"])["commonName"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def copy_app(dest: Path) -> Path:
    """The Flower app as ``flwr run`` bundles it: pyproject (without legacy federations), fedmoe, configs.

    flwr 1.41 migrates a ``[tool.flwr.federations]`` table it finds into ``$FLWR_HOME/config.toml`` and
    comments it out in place, so the test submits a copy and never lets the CLI touch the repository.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    flwr = {k: v for k, v in project["tool"]["flwr"].items() if k != "federations"}
    dest.mkdir()
    (dest / "pyproject.toml").write_text(tomli_w.dumps({"project": project["project"], "tool": {"flwr": flwr}}))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "fedmoe", dest / "fedmoe", ignore=ignore)
    shutil.copytree(REPO / "reproduce" / "configs", dest / "reproduce" / "configs", ignore=ignore)
    return dest


class ListeningSockets(threading.Thread):
    """Polls the listening sockets of the watched processes and all their descendants."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pids: list[int] = []
        self.seen: set[tuple[str, int, str]] = set()
        self.procs: dict[int, psutil.Process] = {}  # every process seen (children outlive a killed parent)
        self.stop = threading.Event()

    def watch(self, proc: subprocess.Popen) -> None:
        """Also watch ``proc`` (and whatever it starts)."""
        self.pids = [*self.pids, proc.pid]

    def run(self):
        while not self.stop.is_set():
            ours = {proc.pid: proc for proc in descendants(self.pids)}
            self.procs.update(ours)
            # One system-wide scan is far cheaper than one per process (which rereads /proc/net each time).
            for conn in psutil.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.pid in ours:
                    try:
                        self.seen.add((conn.laddr.ip, conn.laddr.port, ours[conn.pid].name()))
                    except psutil.NoSuchProcess:
                        pass
            self.stop.wait(0.5)


def descendants(pids: list[int]) -> list[psutil.Process]:
    """The processes ``pids`` and all their children (SuperExec, flwr-serverapp, flwr-clientapp)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


def stop_all(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    """Terminate ``procs``, then kill whatever is still alive after ``timeout`` seconds."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def log_tails(logs: dict[str, Path], lines: int = 25) -> str:
    """The last ``lines`` lines of each process log, for failure messages."""
    parts = []
    for name, path in logs.items():
        text = path.read_text(errors="replace").splitlines() if path.exists() else ["<no log>"]
        parts.append(f"--- {name} ({path}) ---\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


def deployment_env(tmp_path: Path, link_port: int, ca: Path) -> dict[str, str]:
    """Environment of the Flower processes: our venv on PATH, an ``FLWR_HOME`` in ``tmp_path`` whose
    ``config.toml`` holds the TLS connection to the SuperLink, offline and single-threaded."""
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": CONNECTION,
                       CONNECTION: {"address": f"127.0.0.1:{link_port}", "root-certificates": str(ca)}}}))
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperExec spawns flwr-serverapp by name
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "FEDMOE_CACHE": str(default_cache_dir()),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def superlink_command(ca: Path, cert: Path, key: Path, port: int, *extra: str) -> list[str]:
    """``flower-superlink`` over TLS on 127.0.0.1:``port``."""
    return [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key), "--host", "127.0.0.1", "--port", str(port), *extra]


def supernode_command(ca: Path, link_port: int, port: int, node_config: str, *extra: str) -> list[str]:
    """``flower-supernode`` connecting over TLS to the SuperLink, serving its ClientApps on 127.0.0.1:``port``."""
    return [str(BIN / "flower-supernode"), "--root-certificates", str(ca), "--superlink", f"127.0.0.1:{link_port}",
            "--host", "127.0.0.1", "--port", str(port), "--node-config", node_config, *extra]


def flwr_run_command(app: Path, out_dir: Path, overrides: list[str], client_data: str = "server") -> list[str]:
    """``flwr run`` of the app copy on the TLS connection, streaming its log until the run ends."""
    return [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream", "--run-config",
            f'overrides="{";".join(overrides)}" out-dir="{out_dir}" config="" client-data="{client_data}"']


def start(cmd: list[str], env: dict, cwd: Path, log: Path, watcher: ListeningSockets) -> subprocess.Popen:
    """Start ``cmd`` with its output in ``log``, watched by ``watcher``."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    watcher.watch(proc)
    return proc


def stop_everything(procs: dict[str, subprocess.Popen], watcher: ListeningSockets) -> None:
    """Stop the watcher, then every process started or seen (orphans of exited parents included)."""
    watcher.stop.set()
    watcher.join()
    seen = {p.pid: p for p in descendants([p.pid for p in procs.values()])}
    stop_all(list({**watcher.procs, **seen}.values()))


def wait_listening(name: str, port: int, procs: dict, watcher: ListeningSockets, logs: dict, deadline: float,
                   ca: Path) -> None:
    """Wait until the SuperLink listens on ``port`` and check that it serves our certificate."""
    while not any(s[1] == port for s in watcher.seen):
        assert procs[name].poll() is None, f"{name} exited\n" + log_tails(logs)
        assert time.monotonic() < deadline, f"{name} never listened\n" + log_tails(logs)
        time.sleep(0.2)
    assert tls_peer_name(port, ca) == "127.0.0.1", "the SuperLink does not serve our certificate"


def test_flower_deployment_over_tls_on_loopback(tmp_path):
    ca, cert, key = write_certificates(tmp_path)
    link_port, node_ports = free_ports(1)[0], free_ports(2)
    flwr_home = tmp_path / "flwr-home"
    env = deployment_env(tmp_path, link_port, ca)
    app = copy_app(tmp_path / "fedmoe_app")
    out_dir = tmp_path / "results"
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    commands = {
        "superlink": superlink_command(ca, cert, key, link_port),
        **{f"supernode-{i}": supernode_command(ca, link_port, port, f"partition-id={i} num-partitions=2")
           for i, port in enumerate(node_ports)},
        "flwr-run": flwr_run_command(app, out_dir, OVERRIDES),
    }
    logs = {name: logs_dir / f"{name}.log" for name in commands}
    procs: dict[str, subprocess.Popen] = {}
    watcher = ListeningSockets()
    watcher.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for name, cmd in commands.items():
            procs[name] = start(cmd, env, tmp_path, logs[name], watcher)
            if name == "superlink":
                wait_listening(name, link_port, procs, watcher, logs, deadline, ca)
        try:
            rc = procs["flwr-run"].wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the deployment run did not finish within {TIMEOUT_S:.0f} s\n" + log_tails(logs))
        assert rc == 0, "flwr run failed\n" + log_tails(logs)
        for name in ("superlink", "supernode-0", "supernode-1"):
            assert procs[name].poll() is None, f"{name} exited early\n" + log_tails(logs)
    finally:
        stop_everything(procs, watcher)
    cfg = load_config(None, OVERRIDES)
    folder = out_dir / run_id(cfg)
    assert (folder / SUMMARY_FILE).exists(), f"no summary in {folder}\n" + log_tails(logs)
    rounds = load_rounds(folder)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert json.loads((folder / SUMMARY_FILE).read_text())["rounds"] == 2

    seen_ports = {s[1] for s in watcher.seen}
    assert link_port in seen_ports and set(node_ports) <= seen_ports, f"watcher missed the APIs: {watcher.seen}"
    public = {s for s in watcher.seen if s[0] not in LOOPBACK}
    assert not public, f"sockets listening beyond loopback: {sorted(public)}"
    assert any((flwr_home / "apps").iterdir()), "the FAB was not installed under FLWR_HOME"

    # The ServerApp sends client c to the (c mod 2)-th SuperNode; each task starts one flwr-clientapp there.
    sampled = [c for r in rounds[1:] for c in r["clients"]]
    expected = sorted(sum(1 for c in sampled if c % 2 == i) for i in range(2))
    started = sorted(logs[f"supernode-{i}"].read_text().count("Start `flwr-clientapp` process") for i in range(2))
    assert started == expected, f"clientapp launches per node {started}, expected {expected}\n" + log_tails(logs)

    local = load_rounds(run(cfg, out_dir=tmp_path / "local", progress=False))
    for a, b in zip(local, rounds, strict=True):
        assert b.get("clients") == a.get("clients")
        for k in ("score", "sim_time", "train_loss"):
            if a.get(k) is not None:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k


NODE_OVERRIDES = ["scale=smoke", "fed.rounds=3", "fed.num_clients=3", "fed.clients_per_round=3",
                  "fed.min_fit_fraction=0.5"]
NODE_TIMEOUT_S = 600.0  # 3 nodes + the SuperLink's 60 s to notice the killed node, on 2 shared cores
NODE_DATA = {0: (30, "rtx-3090-24gb"), 1: (40, "rtx-3060-12gb"), 2: (50, "jetson-orin-nx-16gb")}


def write_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair in OpenSSH format (NIST P-384): (private, public) paths."""
    private = ec.generate_private_key(ec.SECP384R1())
    paths = folder / name, folder / f"{name}.pub"
    paths[0].write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    paths[1].write_bytes(private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                           serialization.PublicFormat.OpenSSH))
    return paths


def write_dolly_files(folder: Path) -> dict[int, Path]:
    """Node ``i``'s data file: ``NODE_DATA[i][0]`` rows of the offline benchmark in the Dolly schema."""
    from fedmoe.data.offline import make_benchmark

    train, _ = make_benchmark("gsm", n_train=sum(n for n, _ in NODE_DATA.values()), n_test=8, seed=0)
    files, start = {}, 0
    for i, (n, _) in NODE_DATA.items():
        rows = [{"instruction": ex.prompt.split("### Instruction:\n")[1].split("\n\n### Response:")[0],
                 "context": "", "response": ex.answer, "category": ex.domain} for ex in train[start:start + n]]
        files[i] = folder / f"node-{i}.jsonl"
        files[i].write_text("".join(json.dumps(row) + "\n" for row in rows))
        start += n
    return files


@pytest.mark.slow
def test_flower_deployment_nodes_own_data_with_node_auth_and_a_killed_node(tmp_path):
    """SuperLink with SuperNode authentication over TLS; three registered SuperNodes, each holding its own data
    file and naming its device; an unregistered node is refused; one node is killed (SIGKILL) after round 1
    and the run finishes on the two survivors, its failure recorded in rounds.jsonl."""
    ca, cert, key = write_certificates(tmp_path)
    link_port, *node_ports = free_ports(5)
    env = deployment_env(tmp_path, link_port, ca)
    app = copy_app(tmp_path / "fedmoe_app")
    out_dir, logs_dir = tmp_path / "results", tmp_path / "logs"
    logs_dir.mkdir()
    files = write_dolly_files(tmp_path)
    keys = {i: write_node_keys(tmp_path, f"node-{i}") for i in (*NODE_DATA, "stranger")}
    logs: dict[str, Path] = {}
    procs: dict[str, subprocess.Popen] = {}
    watcher = ListeningSockets()
    watcher.start()
    deadline = time.monotonic() + NODE_TIMEOUT_S
    folder = out_dir / node_run_id(load_config(None, NODE_OVERRIDES))
    node_ids: dict[int, int] = {}
    try:
        logs["superlink"] = logs_dir / "superlink.log"
        procs["superlink"] = start(superlink_command(ca, cert, key, link_port, "--enable-supernode-auth"), env,
                                   tmp_path, logs["superlink"], watcher)
        wait_listening("superlink", link_port, procs, watcher, logs, deadline, ca)
        for i in NODE_DATA:  # register the three nodes' public keys with the flwr CLI
            done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(keys[i][1]), CONNECTION,
                                   "--format", "json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, f"flwr supernode register failed: {done.stdout}{done.stderr}"
            node_ids[i] = int(json.loads(done.stdout[done.stdout.index("{"):])["node-id"])
        for i, port in zip((*NODE_DATA, "stranger"), node_ports, strict=True):
            n, device = NODE_DATA.get(i, (0, "rtx-4090-24gb"))
            data = files.get(i, files[0])
            logs[f"supernode-{i}"] = logs_dir / f"supernode-{i}.log"
            procs[f"supernode-{i}"] = start(
                supernode_command(ca, link_port, port, f'data-file="{data}" device="{device}"',
                                  "--auth-supernode-private-key", str(keys[i][0])),
                env, tmp_path, logs[f"supernode-{i}"], watcher)
        logs["flwr-run"] = logs_dir / "flwr-run.log"
        procs["flwr-run"] = start(flwr_run_command(app, out_dir, NODE_OVERRIDES, client_data="node"), env, tmp_path, logs["flwr-run"],
                                  watcher)

        # Kill node 2 (and its ClientApp processes) once round 1 is recorded.
        while not (folder / "rounds.jsonl").exists() or len(load_rounds(folder)) < 2:
            assert procs["flwr-run"].poll() is None, "flwr run ended before round 1\n" + log_tails(logs)
            assert time.monotonic() < deadline, "round 1 never finished\n" + log_tails(logs)
            time.sleep(0.5)
        victim = descendants([procs["supernode-2"].pid])
        for proc in victim:
            proc.kill()
        killed_after = len(load_rounds(folder)) - 1
        try:
            rc = procs["flwr-run"].wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish within {NODE_TIMEOUT_S:.0f} s\n" + log_tails(logs))
        assert rc == 0, "flwr run failed\n" + log_tails(logs)
        stranger_rc = procs["supernode-stranger"].poll()
        listed = subprocess.run([str(BIN / "flwr"), "supernode", "list", CONNECTION, "--format", "json"], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        stop_everything(procs, watcher)

    # The unregistered node was refused: it exited, the SuperLink refused to activate it, it never got a node id.
    assert stranger_rc not in (None, 0), "the unregistered SuperNode is still running\n" + log_tails(logs)
    assert "Failed to activate SuperNode" in logs["supernode-stranger"].read_text(), log_tails(logs)
    assert "No SuperNode found with the given public key" in logs["superlink"].read_text()
    registered = {int(n["node-id"]) for n in json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]}
    assert registered == set(node_ids.values()), listed.stdout

    # The server learnt each node's count and device from the node itself (client c = c-th lowest node id).
    order = sorted(node_ids, key=node_ids.get)
    stream = logs["flwr-run"].read_text()
    for c, i in enumerate(order):
        n, device = NODE_DATA[i]
        assert f"client {c} is SuperNode {node_ids[i]} ({n} examples, device {device})" in stream, stream[-3000:]

    rounds = load_rounds(folder)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3], log_tails(logs)
    assert (folder / SUMMARY_FILE).exists()
    dead = str(order.index(2))
    for r in rounds[1:]:
        assert r["clients"] == [0, 1, 2]
        assert {c: NODE_DATA[order[int(c)]][1] for c in r["devices"]} == r["devices"]
    assert dead in rounds[1]["client_metrics"] and killed_after == 1
    for r in rounds[2:]:  # after the kill: the two survivors train, the dead node's client is a failure
        assert sorted(r["client_metrics"]) == sorted({"0", "1", "2"} - {dead}), r
        assert "Flower error reply" in r["failures"][dead], r["failures"]
    public = {s for s in watcher.seen if s[0] not in LOOPBACK}
    assert not public, f"sockets listening beyond loopback: {sorted(public)}"
