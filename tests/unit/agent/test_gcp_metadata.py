"""Parsing of GCP's instance/preempted and the hanging-GET URL."""

from __future__ import annotations

import urllib.parse

import pytest

from spotrain_operator.agent.gcp_metadata import parse_preempted, preempted_url
from spotrain_operator.agent.interruption import MetadataError


@pytest.mark.parametrize(("body", "expected"), [(b"TRUE", True), (b"FALSE", False), (b"TRUE\n", True),
                                                (b"false", False)])
def test_preempted(body: bytes, expected: bool) -> None:
    assert parse_preempted(200, body) is expected


@pytest.mark.parametrize(("status", "body"), [(200, b""), (200, b"yes"), (200, b"<html>TRUE</html>"),
                                              (200, b"1"), (503, b"TRUE"), (403, b"Missing Metadata-Flavor")])
def test_preempted_garbage(status: int, body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_preempted(status, body)


def test_urls() -> None:
    assert preempted_url("http://127.0.0.1:8080/", None, 60) == \
        "http://127.0.0.1:8080/computeMetadata/v1/instance/preempted"
    url = preempted_url("http://127.0.0.1:8080", "abc/123", 30)
    path, query = url.split("?")
    assert path == "http://127.0.0.1:8080/computeMetadata/v1/instance/preempted"
    assert urllib.parse.parse_qs(query) == {"wait_for_change": ["true"], "last_etag": ["abc/123"],
                                            "timeout_sec": ["30"]}
