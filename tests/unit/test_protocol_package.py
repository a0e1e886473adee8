"""spotrain_protocol, the contract between the operator and the trainer: it ships in both images, so it imports the
standard library alone, and every message it defines reads back as written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrain_protocol import (
    CheckpointRef,
    CheckpointRequest,
    CompletionRecord,
    EnvError,
    InvalidMessage,
    TrainerStatus,
    WorkerEnv,
    envvars,
    parse_status,
)
from spotrain_protocol.status import MAX_INT, MAX_TEXT


def test_the_package_imports_only_the_standard_library() -> None:
    probe = textwrap.dedent("""
        import json, sys
        before = set(sys.modules)
        import spotrain_protocol, spotrain_protocol.constants, spotrain_protocol.envvars
        import spotrain_protocol.messages, spotrain_protocol.status
        roots = {name.partition(".")[0] for name in set(sys.modules) - before}
        print(json.dumps(sorted(roots - set(sys.stdlib_module_names) - {"spotrain_protocol"})))
    """)
    # -I: no user site, no PYTHONPATH; the package is found by the installed project alone.
    out = subprocess.run([sys.executable, "-I", "-c", probe], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []


# -- WorkerEnv ---------------------------------------------------------------------------------------------
env_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=30)
counts = st.integers(min_value=0, max_value=2**31)
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
worker_envs = st.builds(
    WorkerEnv,
    job_name=st.none() | env_text, namespace=st.none() | env_text, rdzv_endpoint=st.none() | env_text,
    rdzv_id=st.none() | env_text, min_nodes=st.none() | counts, max_nodes=st.none() | counts,
    nproc_per_node=st.none() | counts, checkpoint_uri=st.none() | env_text,
    checkpoint_interval=st.none() | st.just("auto") | seconds, checkpoint_min_interval=st.none() | seconds,
    checkpoint_max_interval=st.none() | seconds, keep_last=st.none() | counts, control_port=st.none() | counts,
    mtbf_seconds=st.none() | counts, s3_endpoint_url=st.none() | env_text, staging_dir=st.none() | env_text,
    control_bind=st.none() | env_text, state_dir=st.none() | env_text, termination_log=st.none() | env_text,
)


@given(worker_envs)
def test_worker_env_reads_back_as_written(env: WorkerEnv) -> None:
    written = env.to_env()
    assert all(name.startswith("SPOTRAIN_") and isinstance(value, str) for name, value in written.items())
    assert WorkerEnv.from_env(written) == env


@given(st.dictionaries(st.sampled_from([envvars.JOB_NAME, envvars.MIN_NODES, envvars.CONTROL_PORT, envvars.MTBF_SECONDS,
                                        envvars.CHECKPOINT_INTERVAL, envvars.CHECKPOINT_MIN_INTERVAL, "PATH"]),
                       st.text()))
def test_worker_env_from_any_environment_is_a_value_or_an_error_naming_the_variable(env: dict[str, str]) -> None:
    try:
        WorkerEnv.from_env(env)
    except EnvError as exc:
        assert str(exc).split("=", 1)[0] in env


def test_blank_values_are_unset_and_numbers_are_checked() -> None:
    assert WorkerEnv.from_env({"SPOTRAIN_JOB_NAME": "  ", "SPOTRAIN_CHECKPOINT_INTERVAL": "AUTO"}) == WorkerEnv(
        checkpoint_interval="auto")
    for name, raw in (("SPOTRAIN_MIN_NODES", "two"), ("SPOTRAIN_CHECKPOINT_MIN_INTERVAL", "inf")):
        try:
            WorkerEnv.from_env({name: raw})
        except EnvError as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{name}={raw} was accepted")


# -- CheckpointRequest -------------------------------------------------------------------------------------
times = st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()) | st.just("2026-01-01T08:00:00Z")
requests = st.builds(CheckpointRequest, id=st.text(min_size=1, max_size=256).filter(str.strip),
                     reason=st.text(min_size=1), deadline=st.none() | times, issued_at=st.none() | times)


@given(requests)
def test_checkpoint_request_reads_back_as_written(request: CheckpointRequest) -> None:
    assert CheckpointRequest.from_body(json.dumps(request.to_json()).encode()) == request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)


@given(json_values | st.fixed_dictionaries({}, optional={
    k: json_values | times for k in ("id", "reason", "deadline", "issued_at")}))
def test_any_body_is_a_request_or_an_invalid_message(body: Any) -> None:
    try:
        request = CheckpointRequest.from_body(json.dumps(body).encode())
    except InvalidMessage:
        return
    assert request.id.strip() and isinstance(request.reason, str) and request.reason


def test_the_checkpoint_request_the_control_server_reads() -> None:
    assert CheckpointRequest.from_body(b'{"id": "a"}').to_json() == {"id": "a", "reason": "request", "deadline": None}
    req = CheckpointRequest.from_body(b'{"id": "a", "reason": "spot", "deadline": "2026-01-01T08:22:00Z"}')
    assert req.deadline == "2026-01-01T08:22:00Z"
    for bad in (b"", b"nope", b"[]", b'{"id": ""}', b'{"id": 5}', b'{"id": "a", "reason": 3}',
                b'{"id": "a", "deadline": "tomorrow"}', b'{"id": "a", "deadline": "2026-01-01T08:00:00"}'):
        with pytest.raises(InvalidMessage):
            CheckpointRequest.from_body(bad)


def test_a_request_that_is_not_one_names_its_field() -> None:
    for body, field in ((b"{", "JSON"), (b"[]", "object"), (b'{"id": ""}', "id"), (b'{"id": "a", "reason": 1}',
                        "reason"), (b'{"id": "a", "deadline": "soon"}', "deadline"),
                        (b'{"id": "a", "issued_at": "2026-01-01T08:00:00"}', "issued_at")):
        try:
            CheckpointRequest.from_body(body)
        except InvalidMessage as exc:
            assert field in str(exc)
        else:
            raise AssertionError(f"{body!r} was accepted")


# -- CompletionRecord --------------------------------------------------------------------------------------
optional_counts = st.none() | st.integers(min_value=-(2**70), max_value=2**70)
records = st.builds(CompletionRecord, step=optional_counts, checkpoint=st.none() | st.builds(
    CheckpointRef, step=optional_counts, uri=st.none() | st.text(), time=st.none() | st.text()))


@given(records)
def test_completion_record_reads_back_as_written(record: CompletionRecord) -> None:
    assert CompletionRecord.from_message(record.to_message()) == record


@given(st.text() | json_values.map(json.dumps))
def test_any_termination_message_is_a_record_or_none(message: str) -> None:
    record = CompletionRecord.from_message(message)
    assert record is None or json.loads(message)["spotrain"] == "completed"


def test_only_the_record_itself_is_a_record() -> None:
    assert CompletionRecord.from_message('Traceback: RuntimeError: "completed" is not a valid phase') is None
    assert CompletionRecord.from_message('{"spotrain": "completed"}') == CompletionRecord()
    assert CompletionRecord.from_message('{"spotrain": "completed", "step": true, "checkpoint": {"step": "9"}}') == \
        CompletionRecord(step=None, checkpoint=CheckpointRef())


# -- TrainerStatus -----------------------------------------------------------------------------------------
bounded_counts = st.none() | st.integers(min_value=0, max_value=MAX_INT)
bounded_text = st.none() | st.text(max_size=MAX_TEXT)
statuses = st.builds(
    TrainerStatus, step=bounded_counts, checkpoint_step=bounded_counts, checkpoint_time=bounded_text,
    checkpoint_uri=bounded_text, checkpoint_request_id=bounded_text, completed=st.booleans(),
    pending_request_id=bounded_text, handled_request_id=bounded_text, script_failures=bounded_counts,
    error=bounded_text,
)


@given(statuses)
def test_trainer_status_reads_back_as_written(status: TrainerStatus) -> None:
    assert parse_status(json.dumps(status.to_json()).encode()) == status


status_like = st.fixed_dictionaries({}, optional={
    "step": json_values, "completed": json_values, "handled_request_id": json_values, "script_failures": json_values,
    "error": json_values, "checkpoint_request": json_values | st.fixed_dictionaries({}, optional={"id": json_values}),
    "last_checkpoint": json_values | st.fixed_dictionaries(
        {}, optional={k: json_values for k in ("step", "time", "uri", "request_id")}),
})


@given(st.one_of(json_values, status_like) .map(lambda body: json.dumps(body).encode()) | st.binary())
@settings(max_examples=300)
def test_any_answer_is_a_bounded_status_or_none(raw: bytes) -> None:
    status = parse_status(raw)
    if status is None:
        return
    for count in (status.step, status.checkpoint_step, status.script_failures):
        assert count is None or (type(count) is int and 0 <= count <= MAX_INT)
    for text in (status.checkpoint_time, status.checkpoint_uri, status.checkpoint_request_id,
                 status.pending_request_id, status.handled_request_id, status.error):
        assert text is None or (isinstance(text, str) and len(text) <= MAX_TEXT)
    assert type(status.completed) is bool


def test_the_script_failures_a_worker_reports_reach_the_operator() -> None:
    body = {"step": 17, "script_failures": 2, "error": "KeyError: 'x'", "error_step": 17}
    status = parse_status(json.dumps(body).encode())
    assert status is not None and status.script_failures == 2 and status.error == "KeyError: 'x'"
