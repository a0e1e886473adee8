"""``spotrain simulate`` end to end (no cluster): table, JSON, plots, trace files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotrain_operator.cli import main


def test_simulate_writes_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    trace = tmp_path / "trace.csv"
    code = main(["simulate", "--scenario", "aws_8n_0.06ph", "--work-hours", "0.3", "--sweep", "0.5,1",
                 "--write-trace", str(trace), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "aws_8n_0.06ph" in printed and "spotrain" in printed and "baseline_ckpt30" in printed
    document = json.loads((out / "simulation.json").read_text())
    scenario = document["scenarios"]["aws_8n_0.06ph"]
    assert set(scenario["policies"]) == {"on_demand", "baseline_ckpt30", "elastic_no_notice", "spotrain"}
    assert scenario["policies"]["on_demand"]["cost_ratio"] == 1.0
    assert [row["factor"] for row in scenario["sweep"]] == [0.5, 1.0]
    assert {p.name for p in out.glob("*.png")} >= {"goodput.png", "cost.png", "world-aws_8n_0.06ph.png"}
    assert trace.read_text().startswith("time_s,pool,zone,lost,gained,notice_s\n")

    # The same trace replayed gives the same numbers.
    again = tmp_path / "again"
    assert main(["simulate", "--scenario", "aws_8n_0.06ph", "--work-hours", "0.3", "--no-sweep", "--no-plots",
                 "--trace", str(trace), "--out", str(again)]) == 0
    replayed = json.loads((again / "simulation.json").read_text())["scenarios"]["aws_8n_0.06ph"]["policies"]
    assert replayed["spotrain"]["goodput"] == scenario["policies"]["spotrain"]["goodput"]


def test_a_bad_trace_is_reported_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("time_s,pool,zone,lost,gained,notice_s\n10,spot-m5,mars-1a,1,0,\n")
    assert main(["simulate", "--scenario", "aws_8n_0.06ph", "--trace", str(trace), "--out", str(tmp_path)]) == 2
    assert "line 2: zone 'mars-1a'" in capsys.readouterr().err


def test_a_trace_needs_one_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(tmp_path / "t.csv")]) == 2
    assert "exactly one --scenario" in capsys.readouterr().err


def test_unknown_cost_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--cost", "warp_s=1"])
    assert "unknown cost 'warp_s'" in capsys.readouterr().err


def test_set_changes_the_spotrain_spec(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["simulate", "--scenario", "aws_8n_0.06ph", "--policy", "spotrain", "--work-hours", "0.2",
                 "--no-sweep", "--no-plots", "--set", "fallback.returnToSpot=false",
                 "--set", "elastic.scaleUpWindow=60s", "--out", str(out)]) == 0


@pytest.mark.parametrize(("setting", "message"), [
    ("elastic.scaleUpWindow=soon", "spec.elastic.scaleUpWindow: 'soon' is not a duration"),
    ("placement.pools=3", "--set"),
])
def test_set_errors_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str,
                                   message: str) -> None:
    code = main(["simulate", "--scenario", "aws_8n_0.06ph", "--policy", "spotrain", "--work-hours", "0.2",
                 "--no-sweep", "--no-plots", "--set", setting, "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_set_needs_a_field_and_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--set", "returnToSpot"])
    assert "FIELD=VALUE" in capsys.readouterr().err
