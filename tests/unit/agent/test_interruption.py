"""Time formats and the strength order of interruption kinds."""

from __future__ import annotations

import datetime

import pytest

from spotrain_operator.agent.interruption import (
    AWS_REBALANCE,
    AWS_SCHEDULED,
    AWS_SPOT_ITN,
    AWS_STATE_CHANGE,
    AZURE_PREEMPT,
    GCP_PREEMPTED,
    Interruption,
    format_rfc3339,
    parse_rfc1123,
    parse_rfc3339,
    stronger,
)

UTC = datetime.UTC


def t(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon, 19 Sep 2016 18:29:47 GMT", t(2016, 9, 19, 18, 29, 47)),  # Azure Scheduled Events
        ("19 Sep 2016 18:29:47 GMT", t(2016, 9, 19, 18, 29, 47)),  # EC2 scheduled events (no weekday)
        ("Sat, 05 Jun 2021 15:10:09 GMT", t(2021, 6, 5, 15, 10, 9)),  # AWS Health startTime
        ("Mon, 19 Sep 2016 20:29:47 +0200", t(2016, 9, 19, 18, 29, 47)),
    ],
)
def test_rfc1123(text: str, expected: datetime.datetime) -> None:
    assert parse_rfc1123(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "2016-09-19T18:29:47Z", "Mon, 31 Feb 2016 18:29:47 GMT", None, 17,
                                  "Mon, 19 Sep 2016 18:29:47 -0000"])
def test_rfc1123_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_rfc1123(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T08:22:00Z", t(2026, 1, 1, 8, 22)),
        ("2026-01-01T10:22:00+02:00", t(2026, 1, 1, 8, 22)),
        ("2026-01-01T08:22:00.250Z", datetime.datetime(2026, 1, 1, 8, 22, 0, 250000, tzinfo=UTC)),
    ],
)
def test_rfc3339(text: str, expected: datetime.datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["", "2026-01-01T08:22:00", "yesterday", None, 1767255720])
def test_rfc3339_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_format_is_whole_seconds_utc() -> None:
    local = datetime.datetime(2026, 1, 1, 10, 22, 0, 999000, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert format_rfc3339(local) == "2026-01-01T08:22:00Z"


def test_strength_order() -> None:
    reb = Interruption(AWS_REBALANCE, None)
    sched = Interruption(AWS_SCHEDULED, t(2026, 1, 2))
    itn = Interruption(AWS_SPOT_ITN, t(2026, 1, 1))
    gone = Interruption(AWS_STATE_CHANGE, t(2026, 1, 1))
    assert reb.strength < sched.strength < itn.strength < gone.strength
    assert Interruption(GCP_PREEMPTED, t(2026, 1, 1)).strength == itn.strength
    assert Interruption(AZURE_PREEMPT, t(2026, 1, 1)).strength == itn.strength
    assert stronger(reb, itn) is itn
    assert stronger(itn, reb) is itn
    assert stronger(None, reb) is reb
    assert stronger(reb, None) is reb
    assert stronger(itn, gone) is gone


def test_equal_strength_prefers_the_earlier_deadline() -> None:
    early = Interruption(AWS_SCHEDULED, t(2026, 1, 1))
    late = Interruption(AWS_SCHEDULED, t(2026, 1, 2))
    assert stronger(late, early) is early
    assert stronger(early, late) is early


def test_interruption_validates() -> None:
    with pytest.raises(ValueError):
        Interruption("aws-something", None)
    with pytest.raises(ValueError):
        Interruption(AWS_SPOT_ITN, datetime.datetime(2026, 1, 1))  # naive
