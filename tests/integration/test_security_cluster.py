"""Security against the devcluster's real apiserver: the operator's RBAC is exactly what its code calls, namespace
editors and viewers get SpotTrainingJobs through the aggregated roles, the operator started as the chart starts it
makes each job its NetworkPolicy, the agent's admission policy confines a node-bound token to its own Node, and the
pods spotrain makes pass Pod Security "restricted"."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import Harness, wait_for
from spotrain_operator import main as operator_main
from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.core.network import NetworkPolicyConfig, render_network_policy
from spotrain_operator.core.placement import Choice
from spotrain_operator.core.pods import JobRef, render_rendezvous, render_worker

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spotrain"
RELEASE = "sec"
KUBE_VERSION = "1.36.0"  # the devcluster's (dev/testbin/build.sh)
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="module")
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Render:
    """``helm template`` of the chart with ``--set`` values (tests/integration/conftest.py's helm)."""

    def run(namespace: str, *sets: str) -> list[dict[str, Any]]:
        args = [a for s in sets for a in ("--set", s)]
        out = helm("template", RELEASE, CHART, "--namespace", namespace, "--kube-version", KUBE_VERSION, *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    return run


@pytest.fixture
def applied(devcluster: DevCluster) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """Applies objects (server-side) and deletes them after the test, cluster-scoped ones included."""
    done: list[dict[str, Any]] = []

    def apply(objects: list[dict[str, Any]]) -> None:
        devcluster.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))
        done.extend(objects)

    yield apply
    if done:
        devcluster.kubectl_run("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                               input="\n---\n".join(json.dumps(o) for o in done))


def can_i(cluster: DevCluster, subject: str, *args: str) -> bool:
    result = cluster.kubectl_run("auth", "can-i", f"--as={subject}", *args)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


# -- RBAC: the operator may do what its code calls, and nothing more --------------------------------------------

Grant = tuple[str, str, str, str]  # (API group, resource, verb, resource name or "")


def _grants(*rules: tuple[str, list[str], list[str]] | tuple[str, list[str], list[str], list[str]]) -> set[Grant]:
    out = set()
    for rule in rules:
        group, resources, verbs = rule[0], rule[1], rule[2]
        names = rule[3] if len(rule) > 3 else [""]
        out |= {(group, r, v, n) for r in resources for v in verbs for n in names}
    return out


# Each grant with the call that needs it. A verb added to the chart without a caller, or a call added without its
# verb, fails this test.
OPERATOR_EVERYWHERE = _grants(
    ("", ["nodes"], ["get", "list", "watch", "patch"]),  # kopf watch/index; cluster.get_node; mark drained / queue
    ("", ["pods"], ["list", "watch", "create", "patch", "delete"]),  # kopf, list_job_pods, create, delete reason
    ("", ["pods/eviction"], ["create"]),  # cluster.evict_pod
    ("", ["services"], ["create", "patch"]),  # the rendezvous Service and its moving selector
    ("", ["secrets"], ["create"]),  # each job's control-token Secret (never read back)
    ("policy", ["poddisruptionbudgets"], ["create"]),  # the rendezvous store's budget
    ("karpenter.sh", ["nodepools"], ["get", "list", "watch"]),  # capacity.py: pools that scale from zero
    ("", ["configmaps"], ["get"]),  # spec.placement.pricingConfigMap
    # controllers/network.py's index of the jobs' policies; cluster.create of each job's, patched when out of date
    ("networking.k8s.io", ["networkpolicies"], ["list", "watch", "create", "patch"]),
    ("", ["namespaces"], ["list", "watch"]),  # kopf
    ("", ["events"], ["create"]),  # cluster.post_event
    ("", ["events"], ["list"]),  # cluster.list_events: Karpenter's FailedScheduling on pending pods (capacity.py)
    ("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"]),  # kopf
    ("spotrain.dev", ["spotrainingjobs"], ["get", "list", "watch", "patch", "delete"]),  # kopf; get_job; TTL
    ("spotrain.dev", ["spotrainingjobs/status"], ["update"]),  # cluster.replace_status
    ("spotrain.dev", ["spotrainingjobs/finalizers"], ["update"]),  # blockOwnerDeletion on owner references
)
OPERATOR_OWN_NAMESPACE = _grants(
    ("coordination.k8s.io", ["leases"], ["get", "create", "update"]),  # leader.py
    ("", ["secrets"], ["get"], ["spotrain-control-key"]),  # control_auth.load_or_create_key
)


def rules_of(api_client: client.ApiClient, user: str, namespace: str) -> set[Grant]:
    """What the authorizer lets ``user`` do in ``namespace`` (SelfSubjectRulesReview, impersonated)."""
    review_client = client.ApiClient(api_client.configuration)
    review_client.set_default_header("Impersonate-User", user)
    review = client.AuthorizationV1Api(review_client).create_self_subject_rules_review(
        {"spec": {"namespace": namespace}})
    grants = set()
    for rule in review.status.resource_rules:
        for group in rule.api_groups or [""]:
            grants |= _grants((group, rule.resources or [], rule.verbs, rule.resource_names or [""]))
    return grants


def test_operator_rbac_is_exactly_what_the_code_calls(devcluster: DevCluster, namespace: str,
                                                      api_client: client.ApiClient, render: Render,
                                                      applied: Callable[[list[dict[str, Any]]], None]) -> None:
    objects = [o for o in render(namespace, "agent.enabled=false") if o["kind"] in RBAC_KINDS]
    applied(objects)
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    operator = f"system:serviceaccount:{namespace}:{account}"
    nobody = f"system:serviceaccount:{namespace}:default"  # the baseline every account has (discovery, reviews)

    def granted(ns: str) -> set[Grant]:
        return rules_of(api_client, operator, ns) - rules_of(api_client, nobody, ns)

    # The RBAC authorizer sees new bindings through its informers: wait for the last one to show.
    wait_for("the operator's RBAC in effect", lambda: granted(namespace) >= OPERATOR_OWN_NAMESPACE)
    assert granted("default") == OPERATOR_EVERYWHERE
    assert granted(namespace) == OPERATOR_EVERYWHERE | OPERATOR_OWN_NAMESPACE
    # The matrix as `kubectl auth can-i` reads it, for the grants that matter most.
    assert not can_i(devcluster, operator, "get", "secrets", "-n", "default")
    assert not can_i(devcluster, operator, "get", "secrets/other", "-n", namespace)
    assert can_i(devcluster, operator, "get", "secrets/spotrain-control-key", "-n", namespace)
    assert not can_i(devcluster, operator, "list", "configmaps", "--all-namespaces")
    assert not can_i(devcluster, operator, "create", "pods", "--subresource=exec", "-n", "default")
    assert not can_i(devcluster, operator, "create", "spotrainingjobs.spotrain.dev", "-n", "default")


def test_editors_and_viewers_get_spotrainingjobs_through_aggregation(
        devcluster: DevCluster, namespace: str, render: Render,
        applied: Callable[[list[dict[str, Any]]], None]) -> None:
    applied([o for o in render(namespace, "agent.enabled=false") if o["kind"] in RBAC_KINDS])
    rbac = client.RbacAuthorizationV1Api(config.new_client_from_config(config_file=str(devcluster.kubeconfig)))
    for user, role in (("alice", "edit"), ("victor", "view")):
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })
    stj = "spotrainingjobs.spotrain.dev"
    # kube-controller-manager's clusterrole-aggregation controller folds the labelled roles in.
    wait_for("edit aggregates SpotTrainingJobs", lambda: can_i(devcluster, "alice", "create", stj, "-n", namespace))
    wait_for("view aggregates SpotTrainingJobs", lambda: can_i(devcluster, "victor", "list", stj, "-n", namespace))
    assert can_i(devcluster, "alice", "update", stj, "--subresource=scale", "-n", namespace)
    assert can_i(devcluster, "alice", "delete", stj, "-n", namespace)
    assert not can_i(devcluster, "alice", "update", stj, "--subresource=status", "-n", namespace)
    assert not can_i(devcluster, "alice", "create", stj, "-n", "default"), "only where the RoleBinding is"
    assert can_i(devcluster, "victor", "get", stj, "--subresource=status", "-n", namespace)
    assert not can_i(devcluster, "victor", "create", stj, "-n", namespace)
    assert not can_i(devcluster, "victor", "update", stj, "--subresource=scale", "-n", namespace)


# -- NetworkPolicy -------------------------------------------------------------------------------------------------
# The devcluster has no network plugin, so nothing here enforces a NetworkPolicy: these tests check the objects (what
# the chart asks of the operator, what the operator makes, that the apiserver stores them as rendered, and that they
# go with their job), not the traffic.

def operator_args(objects: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_the_chart_has_the_operator_make_each_job_its_network_policy(render: Render) -> None:
    objects = render("spotrain-system", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring")
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"], "a namespace-wide policy would undo the job's"
    config = operator_main.parse_args(operator_args(objects)).network_policy_config
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert config is not None and config.operator_namespace == "spotrain-system"
    assert config.operator_labels.items() <= pod_labels.items()
    assert config.operator_labels["app.kubernetes.io/component"] == "operator"
    assert config.control_peers == ({"namespaceSelector": {"matchLabels": {"team": "monitoring"}}},)
    off = render("spotrain-system", "networkPolicy.enabled=false")
    assert operator_main.parse_args(operator_args(off)).network_policy_config is None
    assert not [r for o in off if o["kind"] == "ClusterRole" for r in o["rules"] if "networkpolicies" in r["resources"]]


def test_the_operator_makes_each_job_its_network_policy_once_started_with_the_flag(
        harness: Harness, api_client: client.ApiClient, render: Render) -> None:
    networking = client.NetworkingV1Api(api_client)
    namespace = harness.namespace

    def policies() -> list[client.V1NetworkPolicy]:
        return list(networking.list_namespaced_network_policy(namespace).items)

    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([stable])
    without = harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=1, max_nodes=1))
    wait_for("the rendezvous pod", lambda: harness.pods("rendezvous"))
    harness.wait_reconciles()
    assert policies() == [], "an operator started without --network-policy makes none"
    harness.kill(without)

    # Started as the chart starts it, with the operator in the test's namespace: the running job gets its policy.
    args = operator_args(render(namespace))
    flags = args[args.index("--network-policy"):args.index("--network-policy-control-from") + 2]
    harness.start_operator(*flags)
    (policy,) = wait_for("the job's NetworkPolicy", policies)
    job = harness.job()
    owner = policy.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (wk.KIND, "job", job["metadata"]["uid"], True)
    own_pods = {"matchLabels": {wk.JOB_LABEL: "job"}}
    stored = api_client.sanitize_for_serialization(policy.spec)
    assert stored["podSelector"] == own_pods and stored["ingress"][0] == {"from": [{"podSelector": own_pods}]}
    operator_peer = stored["ingress"][1]["from"][0]
    assert operator_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    assert operator_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    config = operator_main.parse_args(flags).network_policy_config
    assert config == NetworkPolicyConfig(namespace, operator_peer["podSelector"]["matchLabels"])
    rendered = render_network_policy(JobRef("job", namespace, job["metadata"]["uid"]), config)
    assert stored == rendered["spec"], "stored as rendered (nothing dropped or defaulted): its spec hash stays current"

    # Deleted by hand: put back.
    networking.delete_namespaced_network_policy(policy.metadata.name, namespace)
    wait_for("the policy put back", lambda: [p for p in policies() if p.metadata.uid != policy.metadata.uid])
    # Owned by the job: the garbage collector deletes it with the job.
    harness.custom.delete_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL, "job")
    wait_for("the policy garbage collected with its job", lambda: not policies())


# -- the agent: its own Node, spotrain's keys only --------------------------------------------------------------

def _token_client(devcluster: DevCluster, token: str) -> client.CoreV1Api:
    admin = client.Configuration()
    config.load_kube_config(config_file=str(devcluster.kubeconfig), client_configuration=admin)
    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert, conf.verify_ssl = admin.host, admin.ssl_ca_cert, admin.verify_ssl
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(conf))


def _refusal(call: Callable[[], Any]) -> str | None:
    """None when the call went through, else the apiserver's message (403 Forbidden)."""
    try:
        call()
    except ApiException as e:
        assert e.status in (403, 422), e.body
        return str(json.loads(e.body)["message"])
    return None


def test_an_agent_token_bound_to_a_node_changes_only_spotrain_keys_on_that_node(
        devcluster: DevCluster, namespace: str, core: client.CoreV1Api, render: Render,
        applied: Callable[[list[dict[str, Any]]], None]) -> None:
    objects = [o for o in render(namespace) if o["kind"] in RBAC_KINDS | {
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}]
    (policy,) = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    applied(objects)
    agent_sa = next(o["metadata"]["name"] for o in objects
                    if o["kind"] == "ServiceAccount" and o["metadata"]["name"].endswith("-agent"))
    nodes = NodeSimulator.from_kubeconfig(devcluster.kubeconfig)
    tag = uuid.uuid4().hex[:5]
    own = nodes.add("spot-cpu", "us-east-1a", name=f"sec-own-{tag}")
    other = nodes.add("spot-cpu", "us-east-1b", name=f"sec-other-{tag}")
    try:
        # A pod of the agent's account on its node: the token kubelet would mount is bound to it, and the
        # apiserver puts the pod's node name into the token (the node claim).
        pod = core.create_namespaced_pod(namespace, {
            "metadata": {"name": "agent"},
            "spec": {"nodeName": own, "serviceAccountName": agent_sa,
                     "containers": [{"name": "agent", "image": "spotrain/operator"}]}})
        bound = core.create_namespaced_service_account_token(agent_sa, namespace, {"spec": {
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "agent", "uid": pod.metadata.uid}}})
        agent = _token_client(devcluster, bound.status.token)

        def annotate(node: str, key: str) -> Callable[[], Any]:
            return lambda: agent.patch_node(node, {"metadata": {"annotations": {key: "x"}}})

        # The policy takes effect once the apiserver has loaded it (until then RBAC alone lets this through): its
        # refusal is the sign.
        wait_for("the admission policy in effect", lambda: _refusal(annotate(other, "spotrain.dev/policy-probe")))
        message = _refusal(annotate(other, wk.AGENT_DEADLINE_ANNOTATION)) or ""
        assert f"only the node its token is bound to ({own})" in message and policy["metadata"]["name"] in message
        assert _refusal(annotate(own, wk.AGENT_DEADLINE_ANNOTATION)) is None
        assert "spotrain.dev/ annotations" in (_refusal(annotate(own, "example.com/owner")) or "")
        assert "spotrain.dev/ labels" in (_refusal(lambda: agent.patch_node(
            own, {"metadata": {"labels": {wk.KARPENTER_CAPACITY_TYPE: "on-demand"}}})) or "")
        taints = [t.to_dict() for t in core.read_node(own).spec.taints or []]
        spotrain_taint = {"key": wk.AGENT_INTERRUPTION_TAINT, "value": "aws-spot-itn", "effect": "NoSchedule"}
        assert _refusal(lambda: agent.patch_node(own, {"spec": {"taints": [*taints, spotrain_taint]}})) is None
        foreign = {"key": "example.com/evict-me", "effect": "NoExecute"}
        assert "spotrain.dev/ taints" in (_refusal(lambda: agent.patch_node(
            own, {"spec": {"taints": [*taints, spotrain_taint, foreign]}})) or "")
        assert "cordon" in (_refusal(lambda: agent.patch_node(own, {"spec": {"unschedulable": True}})) or "")
        assert core.read_node(own).metadata.annotations[wk.AGENT_DEADLINE_ANNOTATION] == "x"
        assert wk.AGENT_DEADLINE_ANNOTATION not in (core.read_node(other).metadata.annotations or {})

        # A token bound to no pod has no node claim: it may change no node at all.
        unbound = core.create_namespaced_service_account_token(agent_sa, namespace,
                                                               {"spec": {"expirationSeconds": 600}})
        loose = _token_client(devcluster, unbound.status.token)
        assert "no node claim" in (_refusal(lambda: loose.patch_node(
            own, {"metadata": {"annotations": {wk.AGENT_DEADLINE_ANNOTATION: "y"}}})) or "")
    finally:
        nodes.remove(own)
        nodes.remove(other)


# -- Pod Security "restricted" -------------------------------------------------------------------------------------

QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
NON_ROOT = {"runAsNonRoot": True, "runAsUser": 65532}


def _restricted(core: client.CoreV1Api, namespace: str) -> None:
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                             "pod-security.kubernetes.io/enforce-version": "latest"}}})


def test_spotrains_pods_pass_restricted_pod_security(devcluster: DevCluster, namespace: str,
                                                     core: client.CoreV1Api) -> None:
    _restricted(core, namespace)
    job = JobRef("llama-3.1-ft", namespace, str(uuid.uuid4()), "token")
    raw = copy.deepcopy(QUICKSTART["spec"])
    raw["template"]["spec"]["securityContext"] = NON_ROOT
    spec = parse_spec(raw)

    def dry_run(pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        pod = {**pod, "metadata": {k: v for k, v in pod["metadata"].items() if k != "ownerReferences"}}
        return devcluster.kubectl_run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))

    rendezvous = dry_run(render_rendezvous(job, spec, "us-east-1a", 1))
    assert rendezvous.returncode == 0, rendezvous.stderr
    worker = dry_run(render_worker(job, spec, Choice("spot-cpu", "us-east-1a"), 1, 1, None))
    assert worker.returncode == 0, worker.stderr
    # A template that runs as root is refused: for that reason only, everything else spotrain fills in.
    as_root = parse_spec(QUICKSTART["spec"])
    refused = dry_run(render_worker(job, as_root, Choice("spot-cpu", "us-east-1a"), 2, 1, None))
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr
    violations = refused.stderr.split("violates PodSecurity", 1)[1]
    assert "runAsNonRoot" in violations
    assert "seccompProfile" not in violations and "allowPrivilegeEscalation" not in violations
    assert "capabilities" not in violations


def test_the_operator_runs_a_job_in_a_restricted_namespace(harness: Harness, core: client.CoreV1Api) -> None:
    _restricted(core, harness.namespace)
    spot = harness.add_node("spot-cpu", "us-east-1a")
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([spot, stable])
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=1, max_nodes=1)
    manifest["spec"]["template"]["spec"]["securityContext"] = NON_ROOT
    harness.create_job(manifest)
    wait_for("the rendezvous pod admitted", lambda: harness.pods("rendezvous"))
    wait_for("a worker admitted", lambda: harness.pods("worker"))
    (worker,) = harness.pods("worker")
    token = next(e for e in worker.spec.containers[0].env if e.name == "SPOTRAIN_CONTROL_TOKEN")
    secret = core.read_namespaced_secret(token.value_from.secret_key_ref.name, harness.namespace)
    assert secret.metadata.owner_references[0].kind == wk.KIND
