"""The Flower simulation engine gives the in-process engine's numbers, and listens only on 127.0.0.1."""

import ipaddress
import threading

import psutil
import pytest

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.engines.flower import run_flower_simulation
from fedmoe.results import load_rounds


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped IPv6 loopback address (``::ffff:127.0.0.1``)."""
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


class ListeningSockets(threading.Thread):
    """Polls the listening sockets of this process and all its descendants (Ray's processes included)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[tuple[str, int, str]] = set()
        self.stop = threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    for conn in proc.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN:
                            self.seen.add((conn.laddr.ip, conn.laddr.port, proc.name()))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.stop.wait(0.2)


def test_flower_simulation_matches_in_process_and_stays_on_loopback(tmp_path):
    cfg = load_config(None, {"fed.rounds": 2}, scale="smoke")
    local = load_rounds(run(cfg, out_dir=tmp_path, progress=False))
    watcher = ListeningSockets()
    watcher.start()
    try:
        flower = load_rounds(run_flower_simulation(cfg, out_dir=tmp_path, num_supernodes=2))
    finally:
        watcher.stop.set()
        watcher.join()
    assert [r["round"] for r in flower] == [r["round"] for r in local]
    for a, b in zip(local, flower, strict=True):
        assert b.get("clients") == a.get("clients")
        for key in ("score", "sim_time", "train_loss"):
            if key in a and a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert watcher.seen, "expected Ray/Flower to open listening sockets during the simulation"
    public = {s for s in watcher.seen if not is_loopback(s[0])}
    assert not public, f"sockets listening beyond loopback: {sorted(public)}"
