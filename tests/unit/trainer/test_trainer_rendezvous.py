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
