from __future__ import annotations

import math

import pytest

from spotrain_trainer.config import ConfigError, TrainerConfig
from spotrain_trainer.interval import IntervalPolicy, clamp, young_daly_interval


def test_young_daly_is_sqrt_2_c_mtbf() -> None:
    assert young_daly_interval(2.0, 3600.0) == pytest.approx(math.sqrt(2 * 2.0 * 3600.0))  # 120 s
    assert young_daly_interval(0.5, 1800.0) == pytest.approx(math.sqrt(1800.0))
    assert young_daly_interval(0.0, 3600.0) == 0.0
    assert young_daly_interval(1.0, 0.0) == 0.0
    assert young_daly_interval(-1.0, 10.0) == 0.0


def test_clamp() -> None:
    assert clamp(5, 1, 10) == 5
    assert clamp(0, 1, 10) == 1
    assert clamp(11, 1, 10) == 10


def test_auto_interval_uses_lower_bound_until_measured_then_young_daly() -> None:
    p = IntervalPolicy(mode="auto", min_seconds=60, max_seconds=3600, mtbf_seconds=3600)
    assert p.interval_seconds() == 60
    p.observe(cost_seconds=2.0, durable_seconds=5.0)
    assert p.interval_seconds() == pytest.approx(120.0)
    assert not p.due(119.0) and p.due(120.0)


def test_auto_interval_is_bounded_and_never_below_time_to_durable() -> None:
    p = IntervalPolicy(mode="auto", min_seconds=60, max_seconds=600, mtbf_seconds=36000)
    p.observe(cost_seconds=100.0, durable_seconds=100.0)  # sqrt(2*100*36000) = 2683 s > max
    assert p.interval_seconds() == 600
    q = IntervalPolicy(mode="auto", min_seconds=10, max_seconds=600, mtbf_seconds=100)
    q.observe(cost_seconds=0.01, durable_seconds=45.0)  # sqrt(2) s, but the upload took 45 s
    assert q.interval_seconds() == 45.0


def test_cost_is_smoothed() -> None:
    p = IntervalPolicy(mode="auto", min_seconds=1, max_seconds=1e9, mtbf_seconds=1000, smoothing=0.5)
    p.observe(4.0, 0.0)
    p.observe(2.0, 0.0)
    assert p.cost_seconds == pytest.approx(3.0)
    assert p.interval_seconds() == pytest.approx(math.sqrt(2 * 3.0 * 1000))


def test_fixed_interval_ignores_measurements() -> None:
    p = IntervalPolicy(mode="fixed", fixed_seconds=30)
    p.observe(100.0, 100.0)
    assert p.interval_seconds() == 30


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sometimes"},
        {"mode": "fixed"},
        {"mode": "fixed", "fixed_seconds": 0},
        {"min_seconds": 10, "max_seconds": 5},
    ],
)
def test_invalid_policies(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        IntervalPolicy(**kwargs)  # type: ignore[arg-type]


def test_interval_settings_from_env() -> None:
    cfg = TrainerConfig.from_env({"SPOTRAIN_CHECKPOINT_URI": "/ckpt/job"})
    assert cfg.interval.mode == "auto" and cfg.interval.mtbf_seconds == 3600 and not cfg.interval.mtbf_known
    assert (cfg.interval.min_seconds, cfg.interval.max_seconds) == (60, 3600)
    cfg = TrainerConfig.from_env(
        {
            "SPOTRAIN_CHECKPOINT_INTERVAL": "90.5",
            "SPOTRAIN_CHECKPOINT_MIN_INTERVAL": "5",
            "SPOTRAIN_CHECKPOINT_MAX_INTERVAL": "50",
            "SPOTRAIN_MTBF_SECONDS": "7200",
            "SPOTRAIN_CHECKPOINT_EVERY_STEPS": "100",
        }
    )
    assert cfg.interval.mode == "fixed" and cfg.interval.fixed_seconds == 90.5
    assert cfg.interval.mtbf_seconds == 7200 and cfg.interval.mtbf_known
    assert cfg.interval.every_steps == 100


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SPOTRAIN_CHECKPOINT_INTERVAL": "often"}, "SPOTRAIN_CHECKPOINT_INTERVAL"),
        ({"SPOTRAIN_CHECKPOINT_INTERVAL": "-3"}, "SPOTRAIN_CHECKPOINT_INTERVAL"),
        ({"SPOTRAIN_MTBF_SECONDS": "nan"}, "SPOTRAIN_MTBF_SECONDS"),
        ({"SPOTRAIN_CHECKPOINT_MIN_INTERVAL": "100", "SPOTRAIN_CHECKPOINT_MAX_INTERVAL": "10"}, "MIN_INTERVAL"),
        ({"SPOTRAIN_KEEP_LAST": "0"}, "SPOTRAIN_KEEP_LAST"),
        ({"SPOTRAIN_CHECKPOINT_URI": "gs://bucket/x"}, "SPOTRAIN_CHECKPOINT_URI"),
        ({"SPOTRAIN_S3_RETRY_MODE": "forever"}, "SPOTRAIN_S3_RETRY_MODE"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        TrainerConfig.from_env(env)


def test_checkpoint_uri_forms() -> None:
    assert TrainerConfig.from_env({"SPOTRAIN_CHECKPOINT_URI": "file:///ckpt/job"}).checkpoint_uri == "/ckpt/job"
    assert TrainerConfig.from_env({"SPOTRAIN_CHECKPOINT_URI": "/ckpt/job/"}).checkpoint_uri == "/ckpt/job"
    assert TrainerConfig.from_env({"SPOTRAIN_CHECKPOINT_URI": "s3://b/p/q/"}).checkpoint_uri == "s3://b/p/q"
    cfg = TrainerConfig.from_env({"SPOTRAIN_CHECKPOINT_URI": "s3://b", "SPOTRAIN_S3_ENDPOINT_URL": "http://x:1"})
    assert cfg.s3.endpoint_url == "http://x:1" and cfg.s3.retry_mode == "adaptive"
