"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK as processes
on 127.0.0.1, with a fresh PKI, RBAC and service-account token signing.

``DevCluster`` is used by the pytest session fixture and by ``spotrain-dev up`` (``make dev-up``) alike.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spotrain_dev import pki, processes, testbin, topology
from spotrain_dev.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[2]
KWOK_STAGES = REPO / "dev" / "kwok" / "stages.yaml"
CRDS = REPO / "crds"
# Service cluster IPs are allocated but never connected to (KWOK pods run nothing); keeping the range on
# loopback means that even a stray connection could not leave the machine.
SERVICE_CIDR = "127.96.0.0/16"
KWOK_DEFAULT_POD_CIDR = "127.15.0.0/16"

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"[devcluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class DevCluster:
    workdir: Path
    topology_file: Path = topology.DEFAULT_TOPOLOGY
    progress: Progress = stderr_progress
    processes: list[ManagedProcess] = field(default_factory=list)
    apiserver_url: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def start(self, install_crds: bool = True) -> None:
        started = time.monotonic()
        bins = testbin.ensure(self.progress)
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        certs = pki.generate(self.workdir / "pki")
        try:
            self._start_etcd(bins)
            self._start_apiserver(bins, certs)
            self._write_kubeconfig(certs)
            self._start_controllers(bins, certs)
            self._start_kwok(bins)
            if install_crds:
                self.apply(CRDS)
            self._create_nodes()
        except BaseException:
            self.stop()
            raise
        self.progress(f"ready in {time.monotonic() - started:.1f} s; kubeconfig: {self.kubeconfig}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def kubectl_run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(testbin.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.kubectl_run(*args, input=input)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result.stdout

    def apply(self, path: Path) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    # -- components ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str | Path]) -> ManagedProcess:
        process = processes.start(name, argv, self.logs)
        self.processes.append(process)
        return process

    def _start_etcd(self, bins: Path) -> None:
        client, peer = processes.free_port(), processes.free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self.progress("starting etcd")
        self._spawn(
            "etcd",
            [
                bins / "etcd",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throwaway test store: durability buys nothing, fsync costs seconds
                "--log-level=warn",
            ],
        )
        processes.wait_until("etcd /health", lambda: _http_ok(f"{self.etcd_url}/health"), self.processes, 60)

    def _start_apiserver(self, bins: Path, certs: pki.ClusterPKI) -> None:
        port = processes.free_port()
        self.apiserver_url = f"https://127.0.0.1:{port}"
        issuer = "https://kubernetes.default.svc.cluster.local"
        self.progress("starting kube-apiserver")
        self._spawn(
            "kube-apiserver",
            [
                bins / "kube-apiserver",
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={certs.apiserver.cert}",
                f"--tls-private-key-file={certs.apiserver.key}",
                f"--client-ca-file={certs.ca.cert}",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={certs.service_account_pub}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'pki'}",
                "--profiling=false",
                "--v=0",
            ],
        )
        self._apiserver_tls = _client_tls(certs)
        self._wait_apiserver_ready()

    def _wait_apiserver_ready(self) -> None:
        processes.wait_until(
            "kube-apiserver /readyz",
            lambda: _http_ok(f"{self.apiserver_url}/readyz", self._apiserver_tls),
            self.processes,
            180,
        )

    def restart_apiserver(self) -> None:
        """Stops kube-apiserver and starts it again on the same port and store, as a control-plane upgrade or a
        crash does; clients see refused connections and broken watches meanwhile (fault-injection tests)."""
        old = next(p for p in self.processes if p.name == "kube-apiserver")
        old.stop()
        self.processes.remove(old)
        self._spawn("kube-apiserver", list(old.popen.args))  # type: ignore[arg-type]
        self._wait_apiserver_ready()

    def _write_kubeconfig(self, certs: pki.ClusterPKI) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "spotrain-dev",
                    "cluster": {
                        "server": self.apiserver_url,
                        "certificate-authority-data": b64(certs.ca.cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(certs.admin.cert),
                        "client-key-data": b64(certs.admin.key),
                    },
                }
            ],
            "contexts": [{"name": "spotrain-dev", "context": {"cluster": "spotrain-dev", "user": "admin"}}],
            "current-context": "spotrain-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _start_controllers(self, bins: Path, certs: pki.ClusterPKI) -> None:
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        delegated = [f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}"]
        self.progress("starting kube-controller-manager and kube-scheduler")
        self._spawn(
            "kube-controller-manager",
            [
                bins / "kube-controller-manager",
                kubeconfig,
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={processes.free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={certs.service_account_key}",
                f"--root-ca-file={certs.ca.cert}",
                # Fast enough that a node which stops heartbeating turns NotReady within a test's patience.
                "--node-monitor-grace-period=20s",
                "--node-monitor-period=2s",
                # Pod IPs are loopback addresses, which Endpoints and EndpointSlices reject; nothing here connects
                # through Services, so their controllers would only log errors.
                "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
                "--v=0",
            ],
        )
        scheduler_port = processes.free_port()
        self._spawn(
            "kube-scheduler",
            [
                bins / "kube-scheduler",
                kubeconfig,
                *delegated,
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--leader-elect=false",
                "--v=0",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # the scheduler's own self-signed serving cert, on loopback
        processes.wait_until(
            "kube-scheduler /readyz",
            lambda: _http_ok(f"https://127.0.0.1:{scheduler_port}/readyz", insecure),
            self.processes,
            120,
        )
        # The controller-manager is up once its service-account controller has made the default account.
        processes.wait_until(
            "the default ServiceAccount (kube-controller-manager)",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False),
            self.processes,
            120,
            interval=1.0,
        )

    def _start_kwok(self, bins: Path) -> None:
        config_path = self.workdir / "kwok.yaml"
        options = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {
                "cidr": KWOK_DEFAULT_POD_CIDR,
                "nodeIP": "127.1.255.254",
                "manageAllNodes": False,
                "manageNodesWithAnnotationSelector": f"{topology.KWOK_ANNOTATION}=fake",
                "nodeLeaseDurationSeconds": 40,
                # A config file turns off KWOK's flag defaults, so these must be spelled out.
                "nodeLeaseParallelism": 4,
                "podPlayStageParallelism": 4,
                "nodePlayStageParallelism": 4,
                "podsOnNodeSyncParallelism": 2,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
                "enableDebuggingHandlers": False,
            },
        }
        config_path.write_text(yaml.safe_dump(options) + "---\n" + KWOK_STAGES.read_text())
        port = processes.free_port()
        self.progress("starting kwok")
        self._spawn(
            "kwok",
            [
                bins / "kwok",
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config_path}",
                f"--server-address=127.0.0.1:{port}",
            ],
        )
        processes.wait_until("kwok /healthz", lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), self.processes, 60)

    def _create_nodes(self) -> None:
        from spotrain_dev.nodes import NodeSimulator

        simulator = NodeSimulator.from_kubeconfig(self.kubeconfig, topology.load(self.topology_file))
        names = simulator.create_topology()
        self.progress(f"creating {len(names)} KWOK nodes from {self.topology_file.name}")
        processes.wait_until(
            f"{len(names)} nodes Ready",
            lambda: simulator.ready_count(names) == len(names),
            self.processes,
            120 + len(names),  # the node lifecycle controller lifts not-ready taints at its own pace
            interval=0.5,
        )

    def state(self) -> dict[str, object]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "apiserver": self.apiserver_url,
            "pids": {p.name: p.popen.pid for p in self.processes},
        }

    def write_state(self) -> None:
        (self.workdir / "state.json").write_text(json.dumps(self.state(), indent=2))


def _client_tls(certs: pki.ClusterPKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca.cert))
    context.load_cert_chain(str(certs.admin.cert), str(certs.admin.key))
    return context


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bool(response.status == 200)
