"""bench/rescale_bench.py's reading of a worker timeline into the phases of a rescale (pure)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rescale_bench", REPO / "bench" / "rescale_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps({"pod": "p", "rank": 0, "restart": 0, **r}) + "\n")


def test_a_noticed_rescale_split_into_its_phases(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    write(path, [{"event": "step", "time": 100.0 + i * 0.1, "step": i, "world_size": 3} for i in range(10)])
    # notice at 100.5; the old world's last step at 100.9; the new workers start at 104 and train at 2 from step 10
    write(path, [{"event": "process_start", "time": 104.0}, {"event": "imported", "time": 106.0},
                 {"event": "session", "time": 107.0, "world_size": 2},
                 {"event": "restored", "time": 107.5, "step": 10, "world_size": 2},
                 {"event": "step", "time": 108.0, "step": 10, "world_size": 2}])
    timeline = bench.Timeline(path)
    b = bench.Bench(None, None, timeline)
    phases = b.phases(100.5, 3, 2)
    assert phases["to_first_step_s"] == pytest.approx(7.5)
    assert phases["steps_lost"] == 0 and phases["restored_step"] == 10
    assert phases["stop_and_rendezvous_s"] == pytest.approx(3.1)
    assert phases["import_s"] == pytest.approx(2.0)
    assert phases["process_group_s"] == pytest.approx(1.0)
    assert phases["restore_s"] == pytest.approx(0.5)
    assert phases["first_step_s"] == pytest.approx(0.5)


def test_a_loss_without_notice_counts_the_steps_rolled_back(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    write(path, [{"event": "step", "time": 10.0 + i, "step": i, "world_size": 3} for i in range(8)])
    write(path, [{"event": "process_start", "time": 30.0}, {"event": "restored", "time": 33.0, "step": 5},
                 {"event": "step", "time": 34.0, "step": 5, "world_size": 2}])
    b = bench.Bench(None, None, bench.Timeline(path))
    assert b.phases(17.5, 3, 2)["steps_lost"] == 3  # steps 5, 6 and 7 again


def test_summary_and_simulator_costs(bench: ModuleType) -> None:
    samples = {"notice": [{"requested_s": 0.2, "durable_s": 0.9, "evicted_s": 1.2, "doomed_stopped_s": 2.2,
                           "stop_and_rendezvous_s": 19.0, "import_s": 2.0, "process_group_s": 0.5, "restore_s": 0.3,
                           "first_step_s": 0.4, "to_first_step_s": 23.0}],
               "no_notice": [{"stop_and_rendezvous_s": 21.0}],
               "join": [{"stop_and_rendezvous_s": 1.5, "last_old_step_after_s": 6.0, "pod_started_s": 4.0}],
               "rendezvous_loss": []}
    summary = bench.summary(samples)
    assert summary["notice"]["to_first_step_s"] == {"p50": 23.0, "p95": 23.0}
    costs = bench.simulator_costs(summary)
    assert costs == {"operator_reaction_s": 0.2, "notice_checkpoint_s": 0.7, "operator_poll_s": 0.3, "stop_s": 1.0,
                     "rendezvous_s": 0.5, "departed_peer_s": 17.5, "restart_s": 2.5, "restore_s": 0.3,
                     "first_step_s": 0.4, "failure_detect_s": 2.0, "join_detect_s": 2.0}
