from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from spotrain_dev.trainer_harness import LOOPBACK, ProcessSet, free_port, start_store


def test_standalone_store_serves_clients_and_stops_on_sigterm(tmp_path: Path) -> None:
    procs = ProcessSet(tmp_path / "logs")
    port = free_port()
    try:
        proc = start_store(procs, port)
        client = dist.TCPStore(LOOPBACK, port, is_master=False, timeout=timedelta(seconds=30))
        client.set("job-g1/key", "value")
        other = dist.TCPStore(LOOPBACK, port, is_master=False, timeout=timedelta(seconds=30))
        assert other.get("job-g1/key") == b"value"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopping on SIGTERM" in procs.log_text("store")
    finally:
        procs.kill_all()


def test_two_stores_share_a_port_on_two_addresses(tmp_path: Path) -> None:
    """A store listens on its own address only: while a job's store moves, the old and the new one share the
    port on one machine (the devcluster's pods share its loopback), and each serves only its own clients."""
    procs = ProcessSet(tmp_path / "logs")
    port = free_port()
    try:
        start_store(procs, port, host="127.16.250.1")
        start_store(procs, port, host="127.16.251.1")
        old = dist.TCPStore("127.16.250.1", port, is_master=False, timeout=timedelta(seconds=60))
        new = dist.TCPStore("127.16.251.1", port, is_master=False, timeout=timedelta(seconds=60))
        old.set("job-g1/key", "old round")
        assert not new.check(["job-g1/key"]) and old.get("job-g1/key") == b"old round"
    finally:
        procs.kill_all()
