"""bench/run.py's results.json: stable keys from each benchmark's JSON, old and new operator formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_keys_from_either_format(run: ModuleType) -> None:
    new = run.operator_keys({"reaction_p50_s": 0.12, "reaction_p99_s": 0.4, "zone_loss_converge_p50_s": 9.0,
                             "zone_loss_converge_worst_s": 20.0, "rss_mb": 180.2})
    assert new == {"reaction_p50_s": 0.12, "reaction_p99_s": 0.4, "zone_loss_converge_s": 9.0,
                   "zone_loss_converge_worst_s": 20.0, "rss_mb": 180.2}
    old = run.operator_keys({"reaction_ms": {"p50": 120.0, "p99": 400.0}, "zone_loss": {"converge_seconds": 9.5}})
    assert old["reaction_p50_s"] == 0.12 and old["zone_loss_converge_s"] == 9.5 and old["rss_mb"] is None


def test_trainer_keys_take_the_gigabyte_rows(run: ModuleType) -> None:
    keys = run.trainer_keys({"results": [
        {"size_mb": 256, "storage": "local", "sync_stall_s": 0.5, "async_stall_s": 0.1,
         "notice_notice_to_durable_s": 0.6},
        {"size_mb": 1024, "storage": "local", "sync_stall_s": 2.0, "async_stall_s": 0.5,
         "notice_notice_to_durable_s": 2.2},
        {"size_mb": 1024, "storage": "s3-moto", "sync_stall_s": 4.0, "async_stall_s": 0.6,
         "notice_notice_to_durable_s": 4.4}]})
    assert keys["stall_sync_s"] == 2.0 and keys["stall_async_s"] == 0.5 and keys["async_stall_vs_sync"] == 0.25
    assert keys["notice_to_durable_s"] == 4.4 and keys["notice_to_durable_storage"] == "s3-moto"


def test_goals_say_what_is_met(run: ModuleType) -> None:
    doc = {"simulation": {"aws_32n_0.6ph": {"spotrain": {"goodput": 0.88, "cost_ratio": 0.41},
                                            "baseline_ckpt30": {"goodput": 0.03}}},
           "rescale": {"notice_to_first_step_p50_s": 14.0}}
    goals = run.goals(doc)
    assert goals["aws_32n_0.6ph_spotrain_goodput_ge_0.90"] == {"value": 0.88, "met": False}
    assert goals["aws_32n_0.6ph_spotrain_goodput_ge_3x_baseline"]["met"] is True
    assert goals["aws_32n_0.6ph_cost_per_step_le_0.45x_on_demand"]["met"] is True
    assert goals["notice_to_first_step_le_10s"] == {"value": 14.0, "met": False}
    assert run.goals({})["notice_to_first_step_le_10s"]["met"] is None
