"""Each job's NetworkPolicy: the manifest (core/network.py), when reconcile asks for it, the operator's flags, the
index of the policies in the cluster and the create-or-patch that applies it."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from typing import Any, cast
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException

from spotrain_dev.corekit import JOB, base_nodes, observe, spec, store, worker
from spotrain_operator import main
from spotrain_operator import wellknown as wk
from spotrain_operator.cluster import Cluster
from spotrain_operator.controllers import network as index
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus
from spotrain_operator.core.network import (
    SPEC_HASH_ANNOTATION,
    NetworkPolicyConfig,
    policy_name,
    render_network_policy,
)
from spotrain_operator.core.pods import CONTROL_PORT, JobRef, job_label_value
from spotrain_operator.core.reconcile import Observed, decide

OPERATOR_LABELS = {"app.kubernetes.io/name": "spotrain", "app.kubernetes.io/component": "operator"}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
CONFIG = NetworkPolicyConfig("spotrain-system", OPERATOR_LABELS, (MONITORING,))
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


# -- the manifest ----------------------------------------------------------------------------------------------

def test_the_policy_lets_the_jobs_own_pods_in_and_the_operator_and_peers_on_the_control_port() -> None:
    policy = render_network_policy(JOB, CONFIG)
    meta, spec_ = policy["metadata"], policy["spec"]
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert (meta["name"], meta["namespace"]) == ("job-spotrain", JOB.namespace)
    assert meta["ownerReferences"] == [JOB.owner_reference()], "garbage collected with the job"
    assert meta["ownerReferences"][0]["controller"] is True
    own_pods = {"matchLabels": {wk.JOB_LABEL: JOB.label}}
    assert meta["labels"] == own_pods["matchLabels"]
    assert spec_["podSelector"] == own_pods and spec_["policyTypes"] == ["Ingress"]
    among_the_job, control = spec_["ingress"]
    # A podSelector without a namespaceSelector: the job's own pods, in its own namespace, on every port.
    assert among_the_job == {"from": [{"podSelector": own_pods}]}
    assert control["ports"] == [{"port": CONTROL_PORT, "protocol": "TCP"}]
    assert control["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "spotrain-system"}},
         "podSelector": {"matchLabels": OPERATOR_LABELS}},
        MONITORING,
    ]


def test_the_spec_hash_follows_the_spec() -> None:
    policy = render_network_policy(JOB, CONFIG)
    assert render_network_policy(JOB, CONFIG) == policy
    no_peers = render_network_policy(JOB, replace(CONFIG, control_peers=()))
    assert no_peers["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != policy["metadata"]["annotations"][
        SPEC_HASH_ANNOTATION]


job_names = st.from_regex(DNS_1123_SUBDOMAIN, fullmatch=True).filter(lambda n: len(n) <= 253)


@given(job_names)
def test_any_job_name_gives_a_valid_policy_that_selects_the_jobs_label(name: str) -> None:
    job = JobRef(name, "ns", "0123456789abcdef")
    policy = render_network_policy(job, CONFIG)
    assert policy["metadata"]["name"] == policy_name(job)
    assert len(policy_name(job)) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(policy_name(job))
    label = policy["spec"]["podSelector"]["matchLabels"][wk.JOB_LABEL]
    assert label == job_label_value(name), "the label the job's pods carry"
    assert len(label) <= 63 and LABEL_VALUE.fullmatch(label)


# -- reconcile -------------------------------------------------------------------------------------------------

def running_job(**changes: Any) -> Observed:
    o = observe(spec(),
                [store(), worker("w1", "spot-cpu", "a", "s-a", serial=1)], base_nodes())
    return replace(o, **changes)


def policies(o: Observed) -> list[dict[str, Any]]:
    return [a.manifest for a in decide(o).actions
            if isinstance(a, act.EnsureObject) and a.manifest["kind"] == "NetworkPolicy"]


def test_reconcile_asks_for_the_policy_only_when_enabled_and_not_current() -> None:
    assert policies(running_job()) == [], "an operator started without --network-policy makes none"
    wanted = render_network_policy(JOB, CONFIG)
    assert policies(running_job(network_policy=CONFIG)) == [wanted], "none in the cluster yet"
    current = wanted["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert policies(running_job(network_policy=CONFIG, network_policy_hash=current)) == [], "current: no call"
    assert policies(running_job(network_policy=CONFIG, network_policy_hash="")) == [wanted], "edited by hand"
    changed = replace(CONFIG, control_peers=())
    assert policies(running_job(network_policy=changed, network_policy_hash=current)) == [
        render_network_policy(JOB, changed)], "the operator's flags changed"


def test_a_new_jobs_policy_comes_before_its_first_pod() -> None:
    o = observe(spec(), [], base_nodes(), status=JobStatus())
    actions = decide(replace(o, network_policy=CONFIG)).actions
    kinds = [a.manifest["kind"] for a in actions if isinstance(a, act.EnsureObject | act.CreatePod)]
    assert kinds[0] == "NetworkPolicy" and "Pod" in kinds


# -- the operator's flags ----------------------------------------------------------------------------------------

def test_the_flags_give_the_config() -> None:
    args = main.parse_args(["--network-policy", "--network-policy-operator-namespace", "spotrain-system",
                            "--network-policy-operator-labels", json.dumps(OPERATOR_LABELS),
                            "--network-policy-control-from", json.dumps([MONITORING])])
    assert args.network_policy_config == CONFIG
    assert main.parse_args([]).network_policy_config is None


@pytest.mark.parametrize(("flags", "message"), [
    (["--network-policy-operator-namespace", ""], "--network-policy-operator-namespace: empty"),
    (["--network-policy-operator-labels", "{}"], "--network-policy-operator-labels: give the operator pods' labels"),
    (["--network-policy-operator-labels", '{"a": 1}'], "--network-policy-operator-labels: give"),
    (["--network-policy-operator-labels", "app=spotrain"], "--network-policy-operator-labels: not JSON"),
    (["--network-policy-control-from", '{"podSelector": {}}'], "--network-policy-control-from: give a JSON list"),
    (["--network-policy-control-from", '[{"pods": {}}]'], "ipBlock, namespaceSelector, podSelector"),
])
def test_bad_flags_are_refused_naming_the_flag(flags: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = ["--network-policy-operator-namespace", "ops", "--network-policy-operator-labels", '{"app": "op"}']
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["--network-policy", *good, *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# -- the index and the create-or-patch ---------------------------------------------------------------------------

def test_the_index_keys_each_policy_by_its_job_and_holds_its_hash() -> None:
    policy = render_network_policy(JOB, CONFIG)
    entry = asyncio.run(index.job_network_policies(namespace=JOB.namespace, body=cast(Any, policy)))
    assert entry == {(JOB.namespace, JOB.name): policy["metadata"]["annotations"][SPEC_HASH_ANNOTATION]}
    foreign = {**policy, "metadata": {**policy["metadata"], "ownerReferences": []}}
    assert asyncio.run(index.job_network_policies(namespace=JOB.namespace, body=cast(Any, foreign))) is None
    assert index.policy_hash({(JOB.namespace, JOB.name): ["abc"]}, (JOB.namespace, JOB.name)) == "abc"
    assert index.policy_hash({}, (JOB.namespace, JOB.name)) is None
    assert index.policy_hash(None, (JOB.namespace, JOB.name)) is None, "not registered: the operator makes none"


def test_an_existing_policy_is_patched_to_the_rendered_spec() -> None:
    cluster = Cluster.__new__(Cluster)
    cluster.networking = mock.Mock()
    policy = render_network_policy(JOB, CONFIG)
    assert cluster.create(policy) is True
    cluster.networking.create_namespaced_network_policy.assert_called_once()
    cluster.networking.patch_namespaced_network_policy.assert_not_called()
    cluster.networking.create_namespaced_network_policy.side_effect = ApiException(status=409)
    assert cluster.create(policy) is False
    name, namespace, patch = cluster.networking.patch_namespaced_network_policy.call_args.args
    assert (name, namespace) == (policy["metadata"]["name"], JOB.namespace)
    assert patch == {"metadata": {"annotations": policy["metadata"]["annotations"]}, "spec": policy["spec"]}

