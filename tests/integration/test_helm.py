"""The Helm chart against the real kube-apiserver of the devcluster: lint and schema, every rendered object
accepted by a server-side dry run, and a real install whose pods land on KWOK nodes, whose agent DaemonSet
covers exactly the spot nodes it tolerates, whose RBAC grants what the operator and agent need and no more,
and whose uninstall leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import capacity_type
from spotrain_dev.testing import wait_for
from spotrain_operator import wellknown as wk

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spotrain"
VALUES = {
    "default": None,
    "eks": CHART / "values-eks.yaml",
    "gke": CHART / "values-gke.yaml",
    "aks": CHART / "values-aks.yaml",
    "kind": REPO / "dev" / "kind" / "values-kind.yaml",
}
PROVIDER = {"default": "auto", "eks": "aws", "gke": "gcp", "aks": "azure", "kind": "auto"}
RELEASE = "spotrain"
IMAGE_UID = 65532  # the Dockerfile's USER (tests/unit/test_packaging.py checks that side)

Helm = Callable[..., subprocess.CompletedProcess[str]]  # the `helm` fixture of tests/integration/conftest.py


def values_args(preset: str) -> list[str | Path]:
    path = VALUES[preset]
    return ["--values", path] if path else []


def render(helm: Helm, namespace: str, *args: str | Path) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, CHART, "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    names = [m["metadata"]["name"] for m in matches]
    assert len(matches) == 1, f"expected one {kind} named *{name_suffix}, got {names}"
    return matches[0]


# -- lint, schema, rendering (helm only) -----------------------------------------------------------------


@pytest.mark.parametrize("preset", list(VALUES))
def test_lint(helm: Helm, preset: str) -> None:
    result = helm("lint", "--strict", CHART, *values_args(preset))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("agent.provider=ibm", "/agent/provider"),
        ("operator.replicas=0", "/operator/replicas"),
        ("operator.replicaCount=3", "'replicaCount' not allowed"),
        ("awsQueue.enabled=true", "/awsQueue/queueUrl"),
        ("watchNamespace=Team_A", "/watchNamespace"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("metrics.port=8081", "metrics.port and health.port must differ"),
    ],
)
def test_bad_values_are_refused_naming_the_field(helm: Helm, setting: str, message: str) -> None:
    result = helm("template", RELEASE, CHART, "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("preset", list(VALUES))
def test_rendered_workloads_follow_the_values(helm: Helm, preset: str) -> None:
    path = VALUES[preset]
    values: dict[str, Any] = yaml.safe_load(path.read_text()) if path else {}
    objects = render(helm, "spotrain-system", *values_args(preset))
    deployment = find(objects, "Deployment")
    operator = _container(deployment)
    args = operator["args"]
    assert deployment["spec"]["replicas"] == 2
    assert "--all-namespaces" in args and "--namespace" not in args
    def arg(flag: str) -> str:
        return str(args[args.index(flag) + 1])

    assert "--leader-elect" in args and arg("--leader-election-namespace") == "spotrain-system"
    assert arg("--lease-name") == RELEASE  # one Lease per release
    assert arg("--metrics-port") == "8080" and arg("--health-port") == "8081"
    queue = values.get("awsQueue", {})
    if queue.get("enabled"):
        assert arg("--aws-queue-url") == queue["queueUrl"] and arg("--aws-region") == queue["region"]
    else:
        assert "--aws-queue-url" not in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in operator["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert operator["resources"]["requests"] and operator["resources"]["limits"]

    agent_ds = find(objects, "DaemonSet")
    agent = _container(agent_ds)
    pod = agent_ds["spec"]["template"]["spec"]
    assert agent["command"] == ["spotrain-agent"]
    assert agent["args"][:2] == ["--provider", PROVIDER[preset]]
    assert agent["env"][0] == {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    assert pod["hostNetwork"] is True
    assert "--health-port" not in agent["args"] and "livenessProbe" not in agent  # agent.healthPort: 0 (off)
    assert {"key": wk.AKS_PRIORITY, "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = required["nodeSelectorTerms"]
    assert [(t["matchExpressions"][0]["key"], t["matchExpressions"][0]["values"]) for t in terms] == [
        (wk.KARPENTER_CAPACITY_TYPE, ["spot"]),
        (wk.EKS_CAPACITY_TYPE, ["SPOT"]),
        (wk.GKE_SPOT, ["true"]),
        (wk.GKE_PREEMPTIBLE, ["true"]),
        (wk.AKS_PRIORITY, ["spot"]),
    ]

    for workload in (deployment, agent_ds):
        security = workload["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_UID
        container = _container(workload)["securityContext"]
        assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
        assert container["capabilities"] == {"drop": ["ALL"]}

    agent_role = find(objects, "ClusterRole", "-agent")
    assert agent_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and o is not agent_role]
    rules = [rule for role in roles for rule in role["rules"]]
    assert not any("*" in r["resources"] or "*" in r["verbs"] for r in rules)
    # Secrets: at most create (the jobs' control tokens) and get by name; never list, watch or read them all.
    for rule in (r for r in rules if "secrets" in r["resources"]):
        assert set(rule["verbs"]) <= {"create"} or (rule.get("resourceNames") and set(rule["verbs"]) <= {"get"}), rule
    assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert find(objects, "Service", "-metrics")["spec"]["ports"][0]["port"] == 8080
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    objects = render(helm, "monitoring-test", "--set", "metrics.serviceMonitor.enabled=true",
                     "--set", "metrics.serviceMonitor.labels.release=prometheus")
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service", "-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["monitoring-test"]}
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The selector picks the metrics Service, not the pods' other Services: it carries the component label.
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_monitors_take_namespace_labels_and_relabelings(helm: Helm) -> None:
    relabel = '{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"}'
    objects = render(helm, "spotrain-system", "--set", "metrics.serviceMonitor.enabled=true",
                     "--set", "metrics.serviceMonitor.namespace=monitoring",
                     "--set-json", f"metrics.serviceMonitor.relabelings=[{relabel}]",
                     "--set-json", 'metrics.serviceMonitor.metricRelabelings=[{"action": "drop", "regex": "x"}]',
                     "--set", "agent.healthPort=9808", "--set", "metrics.podMonitors.agent.enabled=true",
                     "--set", "metrics.podMonitors.workers.enabled=true",
                     "--set", "metrics.podMonitors.workers.labels.release=prometheus")
    monitor = find(objects, "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["spotrain-system"]}  # where the Service is
    assert endpoint["honorLabels"] is True  # per-job namespace/job labels survive the scrape
    assert endpoint["relabelings"] == [yaml.safe_load(relabel)]
    assert endpoint["metricRelabelings"] == [{"action": "drop", "regex": "x"}]

    agent_monitor = find(objects, "PodMonitor", "-agent")
    agent_ds = find(objects, "DaemonSet")
    assert agent_monitor["spec"]["selector"]["matchLabels"].items() <= agent_ds["spec"]["template"]["metadata"][
        "labels"].items()
    assert agent_monitor["spec"]["podMetricsEndpoints"][0]["port"] == _container(agent_ds)["ports"][0]["name"]
    workers = find(objects, "PodMonitor", "-workers")
    assert workers["metadata"]["labels"]["release"] == "prometheus"
    assert workers["spec"]["namespaceSelector"] == {"any": True}
    assert workers["spec"]["selector"]["matchLabels"] == {wk.ROLE_LABEL: "worker"}
    endpoint = workers["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "spotrain-ctl" and endpoint["honorLabels"] is True
    scoped = render(helm, "spotrain-system", "--set", "watchNamespace=team-a",
                    "--set", "metrics.podMonitors.workers.enabled=true")
    assert find(scoped, "PodMonitor", "-workers")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}

    result = helm("template", RELEASE, CHART, "--set", "metrics.podMonitors.agent.enabled=true", check=False)
    assert result.returncode != 0 and "needs agent.healthPort" in result.stderr


def test_prometheus_rule_and_grafana_dashboard(helm: Helm) -> None:
    objects = render(helm, "spotrain-system", "--set", "metrics.prometheusRule.enabled=true",
                     "--set", "metrics.prometheusRule.labels.release=prometheus",
                     "--set", "metrics.grafanaDashboard.enabled=true",
                     "--set", "metrics.grafanaDashboard.annotations.grafana_folder=ML")
    rule = find(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert {g["name"] for g in rule["spec"]["groups"]} == {"spotrain.jobs", "spotrain.capacity", "spotrain.components"}
    dashboard = find(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "ML"}
    board = json.loads(dashboard["data"]["spotrain.json"])
    assert board == json.loads((CHART / "files" / "dashboards" / "spotrain.json").read_text())
    assert not [o for o in render(helm, "spotrain-system") if o["kind"] in ("PrometheusRule", "PodMonitor")]


def test_agent_health_port_adds_a_liveness_probe_only(helm: Helm) -> None:
    agent = _container(find(render(helm, "spotrain-system", "--set", "agent.healthPort=9808"), "DaemonSet"))
    assert agent["args"][agent["args"].index("--health-port") + 1] == "9808"
    assert agent["ports"] == [{"name": "health", "containerPort": 9808, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "readinessProbe" not in agent


def test_watch_namespace_scopes_the_job_permissions(helm: Helm) -> None:
    objects = render(helm, "spotrain-system", "--set", "watchNamespace=team-a")
    args = _container(find(objects, "Deployment"))["args"]
    assert args[args.index("--namespace") + 1] == "team-a" and "--all-namespaces" not in args
    binding = find(objects, "RoleBinding", "-jobs")
    assert binding["metadata"]["namespace"] == "team-a" and binding["roleRef"]["kind"] == "ClusterRole"
    cluster_bindings = [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert not [name for name in cluster_bindings if name.endswith("-jobs")]


# -- against the apiserver -------------------------------------------------------------------------------


VARIANTS: dict[str, list[str]] = {
    "agent-disabled": ["--set", "agent.enabled=false"],
    "agent-health-port": ["--set", "agent.healthPort=9808"],
    "one-replica-no-leader-election": [
        "--set", "operator.replicas=1", "--set", "operator.leaderElection.enabled=false"
    ],
    # core objects only: the monitoring.coreos.com kinds need prometheus-operator's CRDs, absent here
    "grafana-dashboard": ["--set", "metrics.grafanaDashboard.enabled=true"],
}
DRY_RUN = [*VALUES, "watch-namespace", *VARIANTS]


@pytest.mark.parametrize("variant", DRY_RUN)
def test_every_rendered_object_passes_server_side_dry_run(
    devcluster: DevCluster, namespace: str, helm: Helm, variant: str
) -> None:
    if variant == "watch-namespace":
        args: list[str | Path] = ["--set", f"watchNamespace={namespace}"]
    elif variant in VARIANTS:
        args = [*VARIANTS[variant]]
    else:
        args = values_args(variant)
    objects = render(helm, namespace, *args)
    assert {o["kind"] for o in objects} >= {"Deployment", "ServiceAccount", "ClusterRole", "Service"}
    result = devcluster.kubectl_run(
        "apply", "--dry-run=server", "--validate=strict", "--namespace", namespace, "-o", "json", "-f", "-",
        input="\n---\n".join(json.dumps(o) for o in objects),
    )
    assert result.returncode == 0, result.stderr
    accepted = json.loads(result.stdout)
    items = accepted["items"] if accepted.get("kind") == "List" else [accepted]
    assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in objects
    )


def test_kind_quickstart_job_passes_the_crd_validation(devcluster: DevCluster, namespace: str) -> None:
    """dev/kind/quickstart-kind.yaml cannot run here (no Docker); the API server validates it (schema and CEL)."""
    job = yaml.safe_load((REPO / "dev" / "kind" / "quickstart-kind.yaml").read_text())
    job["metadata"]["namespace"] = namespace
    result = devcluster.kubectl_run("apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
                                    input=json.dumps(job))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["elastic"]["maxNodes"] == job["spec"]["elastic"]["maxNodes"]


def test_operator_pods_meet_the_restricted_pod_security_standard(
    devcluster: DevCluster, namespace: str, core: client.CoreV1Api, helm: Helm
) -> None:
    """The operator's pod passes PodSecurity admission at `restricted`; the agent's is refused there only for
    its hostNetwork (docs/install.md says so, and how to install it)."""
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    objects = render(helm, namespace)
    # Pods are admitted only with their ServiceAccount present (gone with the test's namespace).
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    devcluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(a) for a in accounts))

    def dry_run_pod(workload: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"psa-{workload['kind'].lower()}", "namespace": namespace},
            "spec": workload["spec"]["template"]["spec"],
        }
        return devcluster.kubectl_run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))

    operator = dry_run_pod(find(objects, "Deployment"))
    assert operator.returncode == 0, operator.stderr
    agent = dry_run_pod(find(objects, "DaemonSet"))
    assert agent.returncode != 0 and 'violates PodSecurity "restricted' in agent.stderr
    violations = agent.stderr.split("violates PodSecurity", 1)[1]
    assert "host namespaces (hostNetwork=true)" in violations
    assert "hostPort" not in violations and "runAsNonRoot" not in violations and "capabilities" not in violations


# -- a real install ----------------------------------------------------------------------------------------

DAEMONSET_TOLERATIONS = [
    # What the DaemonSet controller adds to every daemon pod (pkg/controller/daemon/util).
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
HOST_NETWORK_TOLERATION = {
    "key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"
}


def tolerates(toleration: dict[str, Any], taint: client.V1Taint) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.effect:
        return False
    if toleration.get("key") and toleration["key"] != taint.key:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("value", "") == (taint.value or ""))


def is_spot(labels: dict[str, str]) -> bool:
    return capacity_type(labels) == "spot"


def can_i(cluster: DevCluster, subject: str, *args: str) -> bool:
    result = cluster.kubectl_run("auth", "can-i", f"--as={subject}", *args)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


@pytest.fixture
def release(devcluster: DevCluster, namespace: str, helm: Helm) -> Iterator[list[dict[str, Any]]]:
    """The chart installed into the test's namespace; yields the release's manifest. Uninstalls on failure,
    so no cluster-scoped RBAC outlives the test."""
    kube = ["--kubeconfig", str(devcluster.kubeconfig), "--namespace", namespace]
    # The devcluster already has the CRD; helm creates the CRDs in crds/ only where they are absent and skips
    # an existing one without error (so no --skip-crds is needed, and the install proves that path).
    result = helm("install", RELEASE, CHART, *kube)
    assert "STATUS: deployed" in result.stdout
    assert "Watching SpotTrainingJobs in all namespaces." in result.stdout  # NOTES.txt rendered
    print(result.stdout)
    manifest = [d for d in yaml.safe_load_all(helm("get", "manifest", RELEASE, *kube).stdout) if d]
    try:
        yield manifest
    finally:
        if RELEASE in helm("list", "--short", *kube).stdout.split():
            helm("uninstall", RELEASE, "--wait", "--timeout", "60s", *kube)


def test_install_places_pods_grants_rbac_and_uninstalls_cleanly(
    devcluster: DevCluster, namespace: str, core: client.CoreV1Api, helm: Helm, release: list[dict[str, Any]]
) -> None:
    apps = client.AppsV1Api(core.api_client)
    kwok_nodes = {
        n.metadata.name: n
        for n in core.list_node().items
        if (n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
    }
    deployment = find(release, "Deployment")
    daemonset = find(release, "DaemonSet")

    # The operator's replicas are scheduled by the real scheduler onto KWOK nodes and marked Running.
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())

    def operator_pods_running() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name in kwok_nodes]
        return running if len(running) == deployment["spec"]["replicas"] else []

    wait_for("the operator's pods Running on KWOK nodes", operator_pods_running)
    deployment_name = deployment["metadata"]["name"]
    available = wait_for(
        "the operator Deployment Available",
        lambda: apps.read_namespaced_deployment(deployment_name, namespace).status.available_replicas,
    )
    assert available == 2

    # The agent covers exactly the spot nodes whose taints it tolerates, computed from the node list.
    pod_spec = daemonset["spec"]["template"]["spec"]
    tolerations = [*pod_spec["tolerations"], *DAEMONSET_TOLERATIONS, HOST_NETWORK_TOLERATION]
    nodes = core.list_node().items
    expected = {
        n.metadata.name
        for n in nodes
        if is_spot(n.metadata.labels or {})
        and all(
            any(tolerates(t, taint) for t in tolerations)
            for taint in n.spec.taints or []
            if taint.effect in ("NoSchedule", "NoExecute")
        )
    }
    on_demand = {n.metadata.name for n in nodes if not is_spot(n.metadata.labels or {})}
    aks_tainted = {
        n.metadata.name for n in nodes if any(t.key == wk.AKS_PRIORITY for t in n.spec.taints or [])
    }
    assert expected and on_demand, "the devcluster topology has spot and on-demand nodes"
    assert aks_tainted and aks_tainted <= expected, "the AKS-style spot:NoSchedule nodes are covered"

    ds_name = daemonset["metadata"]["name"]
    ds_selector = ",".join(f"{k}={v}" for k, v in daemonset["spec"]["selector"]["matchLabels"].items())

    def agent_nodes() -> set[str] | None:
        status = apps.read_namespaced_daemon_set(ds_name, namespace).status
        pods = core.list_namespaced_pod(namespace, label_selector=ds_selector).items
        targets = {p.spec.node_name for p in pods if p.spec.node_name}
        if status.desired_number_scheduled == len(expected) and targets == expected:
            return targets
        return None

    wait_for(f"the agent DaemonSet on the {len(expected)} spot nodes", agent_nodes)
    assert not expected & on_demand

    # RBAC: what each service account may and may not do, as the apiserver's authorizer answers it.
    agent_sa = f"system:serviceaccount:{namespace}:{pod_spec['serviceAccountName']}"
    operator_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    operator_sa = f"system:serviceaccount:{namespace}:{operator_account}"
    some_node = f"nodes/{next(iter(expected))}"
    assert can_i(devcluster, agent_sa, "patch", some_node)
    assert can_i(devcluster, agent_sa, "get", some_node)
    assert not can_i(devcluster, agent_sa, "list", "nodes")
    assert not can_i(devcluster, agent_sa, "list", "pods", "--all-namespaces")
    assert not can_i(devcluster, agent_sa, "list", "pods", "-n", namespace)
    assert not can_i(devcluster, agent_sa, "get", "secrets", "-n", namespace)
    assert not can_i(devcluster, agent_sa, "delete", some_node)

    assert can_i(devcluster, operator_sa, "create", "pods", "--subresource=eviction", "-n", "default")
    assert can_i(devcluster, operator_sa, "create", "pods", "-n", "default")
    assert can_i(devcluster, operator_sa, "watch", "spotrainingjobs.spotrain.dev", "--all-namespaces")
    # the status is replaced with the resourceVersion read (optimistic concurrency): update, not patch
    assert can_i(devcluster, operator_sa, "update", "spotrainingjobs.spotrain.dev", "--subresource=status")
    assert can_i(devcluster, operator_sa, "patch", "nodes")
    assert can_i(devcluster, operator_sa, "create", "events", "-n", "default")
    assert can_i(devcluster, operator_sa, "update", "leases.coordination.k8s.io", "-n", namespace)
    assert not can_i(devcluster, operator_sa, "update", "leases.coordination.k8s.io", "-n", "kube-system")
    assert not can_i(devcluster, operator_sa, "get", "secrets", "-n", namespace)
    assert not can_i(devcluster, operator_sa, "list", "secrets", "--all-namespaces")
    assert not can_i(devcluster, operator_sa, "delete", "nodes")
    assert not can_i(devcluster, operator_sa, "create", "pods", "--subresource=exec", "-n", "default")
    assert can_i(devcluster, operator_sa, "delete", "spotrainingjobs.spotrain.dev", "-n", "default")  # TTL
    assert not can_i(devcluster, operator_sa, "create", "spotrainingjobs.spotrain.dev", "-n", "default")

    # Uninstall removes every object of the release, cluster-scoped RBAC included, and their pods; the CRD
    # (which helm never deletes) stays, and with it every user's jobs.
    helm("uninstall", RELEASE, "--wait", "--timeout", "60s", "--kubeconfig", str(devcluster.kubeconfig),
         "--namespace", namespace)
    for obj in release:
        group = obj["apiVersion"].rpartition("/")[0]
        resource = f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()
        result = devcluster.kubectl_run(
            "get", resource, obj["metadata"]["name"], "-n", namespace, "--ignore-not-found", "-o", "name"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "", f"{resource}/{obj['metadata']['name']} survived helm uninstall"
    release_pods = f"app.kubernetes.io/instance={RELEASE}"
    wait_for(
        "the release's pods to be gone",
        lambda: not core.list_namespaced_pod(namespace, label_selector=release_pods).items,
    )
    devcluster.kubectl("get", "crd", "spotrainingjobs.spotrain.dev")
