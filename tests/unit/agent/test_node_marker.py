"""The pure Node patch decision (idempotence, stronger replaces weaker) and the conflict-retrying marker."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_operator.agent.interruption import (
    AWS_REBALANCE,
    AWS_SCHEDULED,
    AWS_SPOT_ITN,
    AWS_STATE_CHANGE,
    AZURE_PREEMPT,
    GCP_PREEMPTED,
    Interruption,
)
from spotrain_operator.agent.node_marker import NodeMarker, is_drained, plan_patch, read_mark
from spotrain_operator.wellknown import (
    AGENT_DEADLINE_ANNOTATION,
    AGENT_EVENT_ANNOTATION,
    AGENT_INTERRUPTION_TAINT,
    NODE_DRAINED_ANNOTATION,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, 8, 22, tzinfo=UTC)
SPOT_TAINT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}


def node(taints: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
         rv: str = "100") -> dict[str, Any]:
    return {"metadata": {"name": "n1", "resourceVersion": rv, "annotations": annotations or {}},
            "spec": {"taints": taints or []}}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the apiserver applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge(result.get(k), v)
    return result


def apply(n: dict[str, Any], i: Interruption) -> dict[str, Any]:
    patch = plan_patch(n, i)
    assert patch is not None
    out = merge(n, patch)
    out["metadata"]["resourceVersion"] = str(int(n["metadata"]["resourceVersion"]) + 1)
    return out


def ours(n: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in n["spec"].get("taints") or [] if t["key"] == AGENT_INTERRUPTION_TAINT]


ITN = Interruption(AWS_SPOT_ITN, T0, None, "action=terminate")
REBALANCE = Interruption(AWS_REBALANCE, None, None)


def test_first_mark_adds_taint_deadline_and_keeps_other_taints() -> None:
    n = node([SPOT_TAINT], {"other": "x"})
    patch = plan_patch(n, Interruption(AZURE_PREEMPT, T0, "602d9444-d2cd-49c7-8624-8e5fe7d1ae7b"))
    assert patch == {
        "metadata": {
            "resourceVersion": "100",
            "annotations": {
                AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:22:00Z",
                AGENT_EVENT_ANNOTATION: "602d9444-d2cd-49c7-8624-8e5fe7d1ae7b",
            },
        },
        "spec": {"taints": [SPOT_TAINT, {"key": AGENT_INTERRUPTION_TAINT, "value": "azure-preempt",
                                         "effect": "NoSchedule"}]},
    }


@pytest.mark.parametrize("i", [ITN, REBALANCE, Interruption(GCP_PREEMPTED, T0),
                               Interruption(AWS_STATE_CHANGE, T0, "ev-1"), Interruption(AWS_SCHEDULED, T0, "e")])
def test_same_signal_twice_patches_nothing(i: Interruption) -> None:
    marked = apply(node([SPOT_TAINT]), i)
    assert plan_patch(marked, i) is None
    mark = read_mark(marked)
    assert mark is not None and mark.kind == i.kind and mark.deadline == i.deadline and mark.event_id == i.event_id


def test_a_later_deadline_for_the_same_signal_is_not_rewritten() -> None:
    # ec2-metadata-mock (like a restarted agent on GCP) can report a later time on every poll.
    marked = apply(node(), ITN)
    assert plan_patch(marked, Interruption(AWS_SPOT_ITN, T0 + datetime.timedelta(seconds=30))) is None
    assert plan_patch(marked, Interruption(AWS_SPOT_ITN, T0 - datetime.timedelta(milliseconds=500))) is None


def test_an_earlier_deadline_moves_the_deadline_only() -> None:
    marked = apply(node(), ITN)
    earlier = T0 - datetime.timedelta(seconds=30)
    patch = plan_patch(marked, Interruption(AWS_SPOT_ITN, earlier))
    assert patch == {"metadata": {"resourceVersion": "101",
                                  "annotations": {AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:21:30Z"}}}


def test_a_missing_event_id_is_filled_in_but_an_existing_one_is_kept() -> None:
    marked = apply(node(), ITN)
    patch = plan_patch(marked, Interruption(AWS_SPOT_ITN, T0, "ev-1"))
    assert patch == {"metadata": {"resourceVersion": "101", "annotations": {AGENT_EVENT_ANNOTATION: "ev-1"}}}
    marked = apply(marked, Interruption(AWS_SPOT_ITN, T0, "ev-1"))
    assert plan_patch(marked, Interruption(AWS_SPOT_ITN, T0, "ev-2")) is None


def test_rebalance_has_no_deadline_and_clears_a_stale_one() -> None:
    n = node(annotations={AGENT_DEADLINE_ANNOTATION: "2020-01-01T00:00:00Z", AGENT_EVENT_ANNOTATION: "old"})
    marked = apply(n, REBALANCE)
    assert AGENT_DEADLINE_ANNOTATION not in marked["metadata"]["annotations"]
    assert AGENT_EVENT_ANNOTATION not in marked["metadata"]["annotations"]
    assert ours(marked) == [{"key": AGENT_INTERRUPTION_TAINT, "value": "aws-rebalance", "effect": "NoSchedule"}]


def test_terminate_replaces_rebalance() -> None:
    marked = apply(node([SPOT_TAINT]), Interruption(AWS_REBALANCE, None, "rebalance-event"))
    marked = apply(marked, ITN)
    assert ours(marked) == [{"key": AGENT_INTERRUPTION_TAINT, "value": "aws-spot-itn", "effect": "NoSchedule"}]
    assert marked["spec"]["taints"][0] == SPOT_TAINT
    assert marked["metadata"]["annotations"] == {AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:22:00Z"}


def test_rebalance_does_not_replace_terminate() -> None:
    marked = apply(node(), ITN)
    assert plan_patch(marked, REBALANCE) is None
    assert plan_patch(marked, Interruption(AWS_SCHEDULED, T0 - datetime.timedelta(hours=1))) is None


def test_state_change_replaces_the_warning_and_not_the_other_way() -> None:
    gone = Interruption(AWS_STATE_CHANGE, T0 - datetime.timedelta(seconds=100), "ev-gone", "state=shutting-down")
    marked = apply(apply(node(), Interruption(AWS_SPOT_ITN, T0, "ev-itn")), gone)
    assert ours(marked)[0]["value"] == "aws-state-change"
    assert marked["metadata"]["annotations"] == {AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:20:20Z",
                                                 AGENT_EVENT_ANNOTATION: "ev-gone"}
    assert plan_patch(marked, Interruption(AWS_SPOT_ITN, T0, "ev-itn")) is None


def test_an_unknown_value_on_our_taint_is_replaced() -> None:
    n = node([{"key": AGENT_INTERRUPTION_TAINT, "effect": "NoSchedule"}])
    assert read_mark(n) is not None and read_mark(n).kind == ""  # type: ignore[union-attr]
    marked = apply(n, REBALANCE)
    assert ours(marked) == [{"key": AGENT_INTERRUPTION_TAINT, "value": "aws-rebalance", "effect": "NoSchedule"}]


def test_an_unreadable_deadline_is_rewritten() -> None:
    n = node([{"key": AGENT_INTERRUPTION_TAINT, "value": "aws-spot-itn", "effect": "NoSchedule"}],
             {AGENT_DEADLINE_ANNOTATION: "soon"})
    assert plan_patch(n, ITN) == {"metadata": {"resourceVersion": "100",
                                               "annotations": {AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:22:00Z"}}}


def test_v1node_objects_and_dicts_are_read_alike() -> None:
    v1 = client.V1Node(
        metadata=client.V1ObjectMeta(name="n1", resource_version="7", annotations={NODE_DRAINED_ANNOTATION: ""}),
        spec=client.V1NodeSpec(taints=[
            client.V1Taint(key="node.kubernetes.io/not-ready", effect="NoExecute", time_added=T0),
            client.V1Taint(key=AGENT_INTERRUPTION_TAINT, value="aws-rebalance", effect="NoSchedule"),
        ]),
    )
    assert is_drained(v1)
    assert not is_drained(node())
    patch = plan_patch(v1, ITN)
    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["spec"]["taints"] == [
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "2026-01-01T08:22:00Z"},
        {"key": AGENT_INTERRUPTION_TAINT, "value": "aws-spot-itn", "effect": "NoSchedule"},
    ]
    empty = client.V1Node(metadata=client.V1ObjectMeta(name="n2"))
    assert read_mark(empty) is None
    assert plan_patch(empty, REBALANCE) == {"metadata": {}, "spec": {"taints": [
        {"key": AGENT_INTERRUPTION_TAINT, "value": "aws-rebalance", "effect": "NoSchedule"}]}}


class FakeCore:
    """read_node/patch_node over one dict Node, with scripted failures."""

    def __init__(self, n: dict[str, Any], patch_errors: list[int] | None = None):
        self.node = n
        self.patch_errors = list(patch_errors or [])
        self.reads = 0
        self.patches: list[dict[str, Any]] = []

    def read_node(self, name: str, **kwargs: Any) -> client.V1Node:
        self.reads += 1
        meta = self.node["metadata"]
        return client.V1Node(
            metadata=client.V1ObjectMeta(name=name, resource_version=meta["resourceVersion"],
                                         annotations=meta.get("annotations")),
            spec=client.V1NodeSpec(taints=[client.V1Taint(**t) for t in self.node["spec"]["taints"]]),
        )

    def patch_node(self, name: str, body: dict[str, Any], **kwargs: Any) -> None:
        assert kwargs["_content_type"] == "application/merge-patch+json"
        self.patches.append(body)
        if self.patch_errors:
            raise ApiException(status=self.patch_errors.pop(0), reason="scripted")
        self.node = merge(self.node, body)
        self.node["metadata"]["resourceVersion"] = str(int(self.node["metadata"]["resourceVersion"]) + 1)


def test_marker_retries_on_conflict_and_is_idempotent() -> None:
    core = FakeCore(node([SPOT_TAINT]), patch_errors=[409])
    marker = NodeMarker(core)
    result = marker.mark("n1", ITN)
    assert result.changed
    assert core.reads == 2 and len(core.patches) == 2
    assert ours(core.node)[0]["value"] == "aws-spot-itn"
    again = marker.mark("n1", ITN)
    assert not again.changed and again.patch is None
    assert len(core.patches) == 2


def test_marker_raises_other_errors() -> None:
    core = FakeCore(node(), patch_errors=[403])
    with pytest.raises(ApiException):
        NodeMarker(core).mark("n1", ITN)
    assert ours(core.node) == []


def test_marker_gives_up_after_repeated_conflicts() -> None:
    core = FakeCore(node(), patch_errors=[409, 409, 409])
    with pytest.raises(ApiException):
        NodeMarker(core, conflict_retries=3).mark("n1", ITN)
