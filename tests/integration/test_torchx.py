"""`torchx run -s spotrain dist.ddp ...` against the devcluster: the CLI finds the scheduler through its entry
point and submits a SpotTrainingJob the API server accepts (schema and CEL); the operator places it and
`describe` shows the job running with its worker replicas; `list` finds it; `cancel` deletes it; `log_iter` (and
`torchx log`) returns what a worker printed, read through the API server's pods/log.

For the logs, the pod runner runs the workers as real processes, and KubeletLogs serves their output where the API
server looks for a kubelet: KWOK, the devcluster's kubelet, runs no containers and so has no logs of its own."""

from __future__ import annotations

import io
import itertools
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml
from kubernetes.client.rest import ApiException
from torchx.specs import AppState

from spotrain_dev.demo import DUMMY_KEYS
from spotrain_dev.podrunner import PodRunner
from spotrain_dev.testing import Harness, wait_for
from spotrain_operator.torchx_scheduler import SpotrainScheduler


def torchx(harness: Harness, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(harness.cluster.kubeconfig)}
    result = subprocess.run([str(Path(sys.executable).parent / "torchx"), *args], capture_output=True, text=True,
                            env=env, timeout=120, cwd=harness.tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_torchx_run_describe_list_cancel(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", zone) for zone in ("us-east-1a", "us-east-1b")]
    nodes.append(harness.add_node("on-demand", "us-east-1a"))
    harness.wait_nodes_ready(nodes)
    base = harness.tmp / "base.yaml"
    base.write_text(yaml.safe_dump(harness.job_manifest("base")))
    harness.start_operator()

    out = torchx(harness, "run", "-s", "spotrain", "-cfg", f"base={base},namespace={harness.namespace}",
                 "dist.ddp", "-j", "2:2x1", "--image", "spotrain-trainer:dev", "--script", "examples/train_tiny.py",
                 "--", "--steps", "5")
    handle = re.search(r"spotrain://[^/\s]*/(\S+)", out)
    assert handle, out
    app_id = handle.group(1)
    namespace, name = app_id.split(":")
    assert namespace == harness.namespace
    job = harness.job(name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["examples/train_tiny.py", "--steps", "5"]
    assert (job["spec"]["elastic"]["minNodes"], job["spec"]["elastic"]["maxNodes"]) == (2, 2)

    scheduler = SpotrainScheduler("test", harness.api, harness.namespace)
    described = wait_for("the job running on 2 workers", lambda: (
        d if (d := scheduler.describe(app_id)) and d.state == AppState.RUNNING
        and len(d.roles_statuses[0].replicas) == 2 else None), timeout=120)
    assert described.roles[0].num_replicas == 2
    assert "RUNNING" in torchx(harness, "status", f"spotrain://torchx/{app_id}")
    assert app_id in {a.app_id for a in scheduler.list()}

    torchx(harness, "cancel", f"spotrain://torchx/{app_id}")
    wait_for("the job deleted", lambda: scheduler.describe(app_id) is None)


class KubeletLogs:
    """The kubelet's container-log endpoint, ``GET /containerLogs/{namespace}/{pod}/{container}``, serving what
    the pod runner's containers printed (stdout and stderr, as one stream) to the API server's pods/log.

    The API server finds a node's kubelet (kubernetes pkg/kubelet/client/kubelet_client.go, GetConnectionInfo) at
    the node's first address of the preferred types, Hostname first, and the port in
    status.daemonEndpoints.kubeletEndpoint, over HTTPS, without checking the certificate when it has no
    --kubelet-certificate-authority (the devcluster's has none). ``point`` gives a node that address and port
    (KWOK's node stages keep the addresses a node already has). The query is what LogLocation
    (pkg/registry/core/pod/strategy.go) builds; ``follow`` and ``tailLines`` are served as getContainerLogs
    (pkg/kubelet/server/server.go) serves them: follow streams until the container has exited. Options that need
    the CRI log's per-line timestamps (sinceSeconds, sinceTime, timestamps), which the pod runner's plain log has
    not, are refused with 400 rather than ignored."""

    SUPPORTED = frozenset({"follow", "tailLines", "stream"})

    def __init__(self, runner: PodRunner, cert: Path, key: Path) -> None:
        self.runner = runner
        self.stopping = threading.Event()
        logs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = url.path.split("/")
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if len(parts) != 5 or parts[1] != "containerLogs":
                    self.send_error(404)
                    return
                unsupported = set(query) - logs.SUPPORTED
                if unsupported or query.get("stream", "All") != "All":
                    self.send_error(400, f"not served here: {sorted(unsupported) or query['stream']}")
                    return
                namespace, pod = parts[2], parts[3]
                path = logs.runner.pod_log(namespace, pod)
                if not path.exists():  # as a kubelet answers for a container not started yet
                    self.send_error(400, f"container {parts[4]!r} in pod {pod!r} is waiting to start")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                data = path.read_bytes()
                if "tailLines" in query:
                    data = b"".join(data.splitlines(keepends=True)[-int(query["tailLines"]):])
                self.wfile.write(data)
                if query.get("follow") == "true":
                    logs.follow(namespace, pod, path, path.stat().st_size, self.wfile)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def follow(self, namespace: str, pod: str, path: Path, offset: int, out: io.BufferedIOBase) -> None:
        def exited() -> bool:
            return any(e.kind == "exited" and (e.namespace, e.pod) == (namespace, pod) for e in self.runner.events)

        with path.open("rb") as log:
            log.seek(offset)
            while not self.stopping.is_set():
                done = exited()  # before the read: what it wrote before exiting is read below
                chunk = log.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                elif done:
                    return
                else:
                    time.sleep(0.1)

    def point(self, harness: Harness, node: str) -> None:
        harness.core.patch_node_status(node, {"status": {
            "addresses": [{"type": "Hostname", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}})

    def __enter__(self) -> KubeletLogs:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


# A worker that says who it is on stdout and stderr, then trains until it is stopped.
SAY = """
import os, sys, time
rank = os.environ["RANK"]
for i in range(3):
    print(f"spotrain-log-check rank={rank} line={i}", flush=True)
print(f"spotrain-log-check rank={rank} stderr", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
"""


def marked(lines: Iterable[str]) -> list[str]:
    return [line for line in lines if line.startswith("spotrain-log-check ")]


def test_torchx_log_iter_returns_what_each_worker_printed(harness: Harness, tmp_path: Path) -> None:
    nodes = [harness.add_node("spot-cpu", zone) for zone in ("us-east-1a", "us-east-1b")]
    nodes.append(harness.add_node("on-demand", "us-east-1a"))
    harness.wait_nodes_ready(nodes)
    base_manifest = harness.job_manifest("base")
    secret = base_manifest["spec"]["checkpoint"]["s3"]["credentialsSecret"]
    harness.core.create_namespaced_secret(harness.namespace, {"metadata": {"name": secret}, "stringData": DUMMY_KEYS})
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_manifest))
    script = tmp_path / "say.py"
    script.write_text(SAY)
    pki = harness.cluster.workdir / "pki"  # any serving certificate will do: the API server does not check it

    with PodRunner(harness.cluster.kubeconfig, tmp_path / "podrunner", (harness.namespace,)) as runner, \
            KubeletLogs(runner, pki / "apiserver.crt", pki / "apiserver.key") as kubelet:
        for node in nodes:
            kubelet.point(harness, node)
        harness.start_operator()
        out = torchx(harness, "run", "-s", "spotrain", "-cfg", f"base={base},namespace={harness.namespace}",
                     "dist.ddp", "-j", "2:2x1", "--image", "spotrain-trainer:dev", "--script", str(script))
        handle = re.search(r"spotrain://[^/\s]*/(\S+)", out)
        assert handle, out
        app_id = handle.group(1)
        scheduler = SpotrainScheduler("test", harness.api, harness.namespace)
        described = wait_for("the job running on 2 workers", lambda: (
            d if (d := scheduler.describe(app_id)) and d.state == AppState.RUNNING
            and len(d.roles_statuses[0].replicas) == 2 else None), timeout=120)
        role = described.roles[0].name

        # Each replica's log holds what its own process printed, stdout and stderr, every line with its newline.
        seen: dict[int, object] = {}

        def four_lines(k: int) -> Callable[[], list[str] | None]:
            def check() -> list[str] | None:
                try:
                    lines = list(scheduler.log_iter(app_id, role, k))
                except ApiException as e:  # 400 until the pod runner has started the container
                    seen[k] = e
                    assert e.status == 400, e
                    return None
                seen[k] = lines
                return ours if len(ours := marked(lines)) == 4 else None
            return check

        try:
            printed = {k: wait_for(f"replica {k}'s four lines", four_lines(k), timeout=240) for k in (0, 1)}
        except AssertionError as e:
            raise AssertionError(f"{e}; log_iter last gave {seen}") from e
        ranks = {k: re.match(r"spotrain-log-check rank=(\d+)", lines[0]).group(1)  # type: ignore[union-attr]
                 for k, lines in printed.items()}
        assert sorted(ranks.values()) == ["0", "1"]
        for k, lines in printed.items():
            rank = ranks[k]
            assert lines == [*(f"spotrain-log-check rank={rank} line={i}\n" for i in range(3)),
                             f"spotrain-log-check rank={rank} stderr\n"]

        # regex keeps the matching lines only; should_tail follows the log (kubelet's follow) with the same lines.
        assert list(scheduler.log_iter(app_id, role, 0, regex=r"line=1\b")) == [printed[0][1]]
        followed = scheduler.log_iter(app_id, role, 0, regex="^spotrain-log-check ", should_tail=True)
        assert list(itertools.islice(followed, 4)) == printed[0]

        # `torchx log` prints them, one per line, prefixed with the role and replica.
        cli = torchx(harness, "log", f"spotrain://torchx/{app_id}/{role}/1")
        assert [line.split(" ", 1)[1] + "\n" for line in cli.splitlines() if "spotrain-log-check " in line] == \
            printed[1]

        torchx(harness, "cancel", f"spotrain://torchx/{app_id}")
        wait_for("the job deleted", lambda: scheduler.describe(app_id) is None)
