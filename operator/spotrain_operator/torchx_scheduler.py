"""The ``spotrain`` TorchX scheduler: ``torchx run -s spotrain dist.ddp -j 2:8 --script train.py`` submits a
SpotTrainingJob.

Registered under the ``torchx.schedulers`` entry point (pyproject.toml), next to TorchX's built-in schedulers:
TorchX replaces its built-in list with the entry points when there are any (``torchx.util.entrypoints.load_group``
in torchx 0.7), so pyproject.toml registers those too.

The AppDef's one role becomes the job's worker template. spotrain runs the role through ``spotrain-launch``, which
execs torchrun with spotrain's own rendezvous, so only the training script, its arguments and the processes per
node are taken from a ``dist.ddp`` command line (``torchrun ... script.py args``); the rendezvous options TorchX
puts there are dropped. ``-j MIN:MAX`` (``Role.min_replicas``, ``Role.num_replicas``) becomes
``spec.elastic.minNodes``/``maxNodes``. What an AppDef cannot say (spot pools, the checkpoint location, fallback,
budgets) comes from a base SpotTrainingJob manifest, the run option ``base``, that platform teams keep per
cluster. ``app_to_job`` is the pure translation; the scheduler class only talks to the API server.

Run options (``-cfg``): ``base`` (required: path of a SpotTrainingJob YAML), ``namespace`` (default: the
kubeconfig context's, else ``default``), ``checkpoint_uri`` (overrides ``spec.checkpoint.uri``),
``service_account``.
"""

from __future__ import annotations

import codecs
import copy
import json
import re
import shlex
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

import yaml
from torchx.schedulers.api import (
    DescribeAppResponse,
    ListAppResponse,
    Scheduler,
    Stream,
    filter_regex,
)
from torchx.schedulers.ids import make_unique
from torchx.specs import AppDef, AppDryRunInfo, AppState, ReplicaStatus, Role, RoleStatus, macros, runopts
from torchx.util.strings import normalize_str

from spotrain_operator import wellknown as wk
from spotrain_operator.core.pods import job_label_value
from spotrain_protocol import envvars

BACKEND = "spotrain"
LABEL_APP_NAME = "torchx.pytorch.org/app-name"
LABEL_ROLE_NAME = "torchx.pytorch.org/role-name"
# torchrun's flags that take no value (torch.distributed.run's argument parser); every other flag takes one.
TORCHRUN_SWITCHES = frozenset({"--standalone", "-m", "--module", "--no-python", "--no_python", "--run-path",
                               "--run_path"})
PYTHONS = frozenset({"python", "python3"})

# The phase a SpotTrainingJob reports -> the TorchX state. Waiting (below minNodes, the checkpoint kept) and
# Suspended resume by themselves or on request: not terminal, so PENDING.
PHASE_STATES = {
    "Pending": AppState.PENDING,
    "Waiting": AppState.PENDING,
    "Suspended": AppState.PENDING,
    "Running": AppState.RUNNING,
    "Rescaling": AppState.RUNNING,
    "Succeeded": AppState.SUCCEEDED,
    "Failed": AppState.FAILED,
}
POD_STATES = {"Pending": AppState.PENDING, "Running": AppState.RUNNING, "Succeeded": AppState.SUCCEEDED,
              "Failed": AppState.FAILED}


class SpotrainOpts(TypedDict, total=False):
    base: str
    namespace: str
    checkpoint_uri: str
    service_account: str


class TranslationError(ValueError):
    """An AppDef spotrain cannot run, with what to change."""


@dataclass(frozen=True)
class Launch:
    """What spotrain-launch needs from a role's command line: the script (or module) and its arguments."""

    script_args: list[str]
    module: bool
    nproc_per_node: int


def parse_launch(role: Role) -> Launch:
    """The training script of a ``dist.ddp`` role (``bash -c "torchrun ... script args"``), a torchrun entrypoint,
    or a plain ``python script args`` role."""
    argv = [role.entrypoint, *role.args]
    if argv[0] in ("bash", "sh") and len(argv) == 3 and argv[1] == "-c":
        argv = shlex.split(argv[2])
    if argv[0] in PYTHONS:
        rest = argv[1:]
        if rest[:2] == ["-m", "torch.distributed.run"]:
            return _parse_torchrun(rest[2:], role)
        if rest[:1] == ["-m"] and len(rest) > 1:
            return Launch(rest[1:], True, 1)
        if rest and not rest[0].startswith("-"):
            return Launch(rest, False, 1)
    if argv[0] == "torchrun":
        return _parse_torchrun(argv[1:], role)
    raise TranslationError(
        f"role {role.name!r}: spotrain runs the training script through spotrain-launch (torchrun), so the role "
        f"must be a torchrun command (dist.ddp) or `python script.py ...` (utils.python); got {shlex.join(argv)!r}")


def _parse_torchrun(args: list[str], role: Role) -> Launch:
    nproc = "1"
    module = False
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag, eq, value = args[i].partition("=")
        if flag in TORCHRUN_SWITCHES:
            module = module or flag in ("-m", "--module")
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise TranslationError(f"role {role.name!r}: torchrun option {flag} has no value")
            value = args[i + 1]
            i += 1
        if flag in ("--nproc_per_node", "--nproc-per-node"):
            nproc = value
        i += 1
    if i >= len(args):
        raise TranslationError(f"role {role.name!r}: the torchrun command names no training script")
    if nproc == "gpu":
        nproc = str(role.resource.gpu)
    if not nproc.isdigit() or int(nproc) < 1:
        raise TranslationError(f"role {role.name!r}: --nproc_per_node={nproc}: spotrain needs a number of processes "
                               "per node (e.g. -j 2:8x4, or the GPUs per node)")
    return Launch(args[i:], module, int(nproc))


def _resources(role: Role) -> dict[str, Any]:
    resource = role.resource
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resource.cpu > 0:
        requests["cpu"] = f"{int(resource.cpu * 1000)}m"
    if resource.memMB > 0:
        requests["memory"] = limits["memory"] = f"{int(resource.memMB)}M"
    if resource.gpu > 0:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(resource.gpu)
    for device, count in resource.devices.items():
        requests[device] = limits[device] = str(count)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def app_to_job(app: AppDef, base: Mapping[str, Any], name: str, namespace: str,
               cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The SpotTrainingJob that runs ``app``: ``base``'s spec with the role's container, elastic range and
    retries. Pure: the caller picks the name."""
    cfg = cfg or {}
    if len(app.roles) != 1:
        raise TranslationError(f"app {app.name!r} has {len(app.roles)} roles; a SpotTrainingJob runs one (the "
                               "workers of one torchrun job)")
    if base.get("kind") != wk.KIND or not isinstance(base.get("spec"), dict):
        raise TranslationError(f"the base manifest must be a {wk.KIND} with a spec; got kind {base.get('kind')!r}")
    role = macros.Values(img_root="", app_id=name, replica_id="0", rank0_env=envvars.RDZV_ENDPOINT).apply(
        app.roles[0])
    launch = parse_launch(role)
    spec = copy.deepcopy(base["spec"])
    template = spec.setdefault("template", {})
    pod_spec = template.setdefault("spec", {})
    containers = pod_spec.get("containers") or [{"name": "trainer"}]
    trainer = dict(containers[0])
    env = [e for e in trainer.get("env", []) if e.get("name") not in role.env]
    env += [{"name": k, "value": v} for k, v in role.env.items()]
    trainer.update(
        image=role.image,
        command=["spotrain-launch"],
        args=(["-m"] if launch.module else []) + launch.script_args,
        env=env,
    )
    resources = _resources(role)
    if resources:
        trainer["resources"] = resources
    if role.port_map:
        ports = [p for p in trainer.get("ports", []) if p.get("name") not in role.port_map]
        trainer["ports"] = ports + [{"name": normalize_str(k)[:15], "containerPort": v}
                                    for k, v in role.port_map.items() if k != "c10d"]
        if not trainer["ports"]:
            del trainer["ports"]
    pod_spec["containers"] = [trainer, *containers[1:]]
    if cfg.get("service_account"):
        pod_spec["serviceAccountName"] = cfg["service_account"]
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), LABEL_APP_NAME: normalize_str(app.name)[:63],
                          LABEL_ROLE_NAME: normalize_str(role.name)[:63]}
    max_nodes = int(role.num_replicas)
    min_nodes = int(role.min_replicas) if role.min_replicas is not None else max_nodes
    elastic = spec.setdefault("elastic", {})
    elastic.update(minNodes=min_nodes, maxNodes=max_nodes, nprocPerNode=launch.nproc_per_node)
    if "targetNodes" in elastic and not min_nodes <= elastic["targetNodes"] <= max_nodes:
        del elastic["targetNodes"]
    if role.max_retries:
        spec.setdefault("budgets", {})["maxFailures"] = int(role.max_retries)
    if cfg.get("checkpoint_uri"):
        spec.setdefault("checkpoint", {})["uri"] = cfg["checkpoint_uri"]
    for required in ("placement", "checkpoint"):
        if required not in spec:
            raise TranslationError(f"the base manifest has no spec.{required}: spotrain cannot guess the spot pools "
                                   "or where checkpoints go; add them to the base SpotTrainingJob")
    labels = {**(base.get("metadata") or {}).get("labels", {}), LABEL_APP_NAME: normalize_str(app.name)[:63]}
    return {"apiVersion": f"{wk.GROUP}/{wk.VERSION}", "kind": wk.KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}


def job_name(app: AppDef) -> str:
    """A unique, DNS-safe job name: the app's name cut to leave room for spotrain's pod suffixes."""
    stem = re.sub(r"-+", "-", normalize_str(app.name)).strip("-")[:30] or "app"
    if not stem[0].isalpha():
        stem = "j" + stem
    return make_unique(stem, 6)


def describe_job(app_id: str, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> DescribeAppResponse:
    """The TorchX view of a SpotTrainingJob and its worker pods (pure)."""
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    container = ((spec.get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels", {})
    role_name = labels.get(LABEL_ROLE_NAME, "trainer")
    elastic = spec.get("elastic") or {}
    role = Role(name=role_name, image=container.get("image", ""), min_replicas=elastic.get("minNodes"),
                num_replicas=int(elastic.get("maxNodes", 0)))
    replicas = [
        ReplicaStatus(id=k, role=role_name, state=POD_STATES.get((p.get("status") or {}).get("phase", ""),
                                                                 AppState.UNKNOWN),
                      hostname=(p.get("status") or {}).get("podIP") or "")
        for k, p in enumerate(_ordered(pods))
    ]
    ready: Mapping[str, Any] = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    return DescribeAppResponse(
        app_id=app_id,
        state=PHASE_STATES.get(status.get("phase", ""), AppState.SUBMITTED if not status else AppState.UNKNOWN),
        num_restarts=int(status.get("preemptions", 0)) + int(status.get("failures", 0)),
        msg=ready.get("message", ""),
        roles=[role],
        roles_statuses=[RoleStatus(role_name, replicas)],
    )


def _ordered(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Worker pods in the order they were made (spotrain's serial label): replica k is the k-th."""
    def serial(p: Mapping[str, Any]) -> int:
        value = ((p.get("metadata") or {}).get("labels") or {}).get(wk.SERIAL_LABEL, "0")
        return int(value) if value.isdigit() else 0
    return sorted(pods, key=serial)


def split_app_id(app_id: str) -> tuple[str, str]:
    namespace, sep, name = app_id.partition(":")
    if not sep or not namespace or not name:
        raise ValueError(f"app id {app_id!r} is not NAMESPACE:NAME")
    return namespace, name


@dataclass
class SpotrainJobRequest:
    manifest: dict[str, Any]

    def __str__(self) -> str:
        return yaml.safe_dump(self.manifest, sort_keys=False)


class SpotrainScheduler(Scheduler[SpotrainOpts]):
    """TorchX scheduler for SpotTrainingJobs; app ids are ``NAMESPACE:NAME``."""

    def __init__(self, session_name: str, client: Any | None = None, namespace: str | None = None) -> None:
        super().__init__(BACKEND, session_name)
        self._client = client
        self._namespace = namespace  # for list() and as the default of submissions; else the kubeconfig's

    def _api_client(self) -> Any:
        if self._client is None:
            from kubernetes import config

            try:
                self._client = config.new_client_from_config()
            except config.ConfigException:
                self._client = _incluster_client()
        return self._client

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._api_client())

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._api_client())

    def _run_opts(self) -> runopts:
        opts = runopts()
        opts.add("base", type_=str, required=True,
                 help="path of a SpotTrainingJob YAML whose spec supplies placement (spot pools), checkpoint, "
                      "fallback, termination and budgets; the app fills in the workers")
        opts.add("namespace", type_=str, help="namespace of the job (default: the kubeconfig context's)")
        opts.add("checkpoint_uri", type_=str, help="overrides spec.checkpoint.uri of the base")
        opts.add("service_account", type_=str, help="the worker pods' service account")
        return opts

    def _default_namespace(self) -> str:
        from kubernetes import config

        if self._namespace:
            return self._namespace
        try:
            _, active = config.list_kube_config_contexts()
            return str(active.get("context", {}).get("namespace") or "default")
        except (config.ConfigException, TypeError):
            return "default"

    def _submit_dryrun(self, app: AppDef, cfg: SpotrainOpts) -> AppDryRunInfo[SpotrainJobRequest]:
        base_path = cfg.get("base")
        if not base_path:
            raise TranslationError("the spotrain scheduler needs -cfg base=PATH: a SpotTrainingJob YAML with the "
                                   "spot pools (spec.placement) and checkpoint location (spec.checkpoint)")
        base = yaml.safe_load(Path(base_path).read_text())
        namespace = cfg.get("namespace") or (base.get("metadata") or {}).get("namespace") or self._default_namespace()
        manifest = app_to_job(app, base, job_name(app), namespace, cfg)
        return AppDryRunInfo(SpotrainJobRequest(manifest), str)

    def schedule(self, dryrun_info: AppDryRunInfo[SpotrainJobRequest]) -> str:
        manifest = dryrun_info.request.manifest
        namespace = manifest["metadata"]["namespace"]
        created = self._custom().create_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL, manifest)
        return f"{namespace}:{created['metadata']['name']}"

    def _validate(self, app: AppDef, scheduler: str) -> None:
        """Resources are optional: the base's pod template may carry them."""

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        from kubernetes.client.rest import ApiException

        namespace, name = split_app_id(app_id)
        try:
            job = self._custom().get_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return describe_job(app_id, job, self._worker_pods(namespace, name))

    def _worker_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"{wk.JOB_LABEL}={job_label_value(name)},{wk.ROLE_LABEL}=worker"
        pods = self._core().list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        return list(json.loads(pods.data)["items"])

    def list(self) -> list[ListAppResponse]:
        namespace = self._default_namespace()
        jobs = self._custom().list_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL)
        return [ListAppResponse(app_id=f"{namespace}:{j['metadata']['name']}",
                                state=PHASE_STATES.get((j.get("status") or {}).get("phase", ""), AppState.SUBMITTED))
                for j in jobs["items"]]

    def _cancel_existing(self, app_id: str) -> None:
        namespace, name = split_app_id(app_id)
        # The worker pods, the rendezvous pod and Service are owned by the job: deleting it removes them.
        self._custom().delete_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL, name)

    def log_iter(self, app_id: str, role_name: str, k: int = 0, regex: str | None = None,
                 since: datetime | None = None, until: datetime | None = None, should_tail: bool = False,
                 streams: Stream | None = None) -> Iterable[str]:
        if until is not None:
            raise ValueError("the Kubernetes log API has no end time: leave `until` unset")
        if streams not in (None, Stream.COMBINED):
            raise ValueError("Kubernetes logs combine stdout and stderr: use streams=COMBINED")
        namespace, name = split_app_id(app_id)
        pods = _ordered(self._worker_pods(namespace, name))
        if k >= len(pods):
            raise ValueError(f"{app_id} has {len(pods)} worker pods; replica {k} does not exist (yet)")
        pod = pods[k]
        container = pod["spec"]["containers"][0]["name"]
        args: dict[str, Any] = {"name": pod["metadata"]["name"], "namespace": namespace, "container": container}
        if since is not None:
            args["since_seconds"] = max(1, int((datetime.now() - since).total_seconds()))
        # The body is read raw: kubernetes-client 36 returns a text response as the repr of its bytes ("b'...'"),
        # and its Watch asks for pod logs with watch=True instead of follow=True (kubernetes-client/python#2596).
        response = self._core().read_namespaced_pod_log(**args, follow=should_tail, _preload_content=False)
        lines = log_lines(response.stream(decode_content=True), response.release_conn)
        return filter_regex(regex, lines) if regex else lines


def log_lines(chunks: Iterable[bytes], done: Callable[[], object] = lambda: None) -> Generator[str, None, None]:
    """The UTF-8 text of a log read in chunks, as lines each ending with its newline (TorchX's Scheduler.log_iter
    contract: `torchx log` prints them with end=""), yielded as soon as they are complete; a last line without one
    comes at the end. ``done`` runs when the chunks end or the reader stops early."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    try:
        for chunk in chunks:
            pending += decoder.decode(chunk)
            *complete, pending = pending.split("\n")
            yield from (line + "\n" for line in complete)
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending
    finally:
        done()


def _incluster_client() -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def create_scheduler(session_name: str, client: Any | None = None, namespace: str | None = None,
                     **kwargs: Any) -> SpotrainScheduler:
    return SpotrainScheduler(session_name, client, namespace)
