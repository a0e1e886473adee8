"""spotrain-operator: the SpotTrainingJob controller.

    spotrain-operator [--kubeconfig PATH] [--namespace NS ... | --all-namespaces]
                      [--leader-elect [--leader-election-namespace NS] [--lease-duration 15] [--renew-deadline 10]
                       [--retry-period 2]] [--metrics-port 8080] [--health-port 8081]
                      [--aws-queue-url URL --aws-region R [--aws-endpoint-url URL] [--aws-queue-max-receives 5]]
                      [--network-policy --network-policy-operator-labels JSON [--network-policy-operator-namespace NS]
                       [--network-policy-control-from JSON]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from spotrain_operator import health, metrics
from spotrain_operator.cluster import Cluster
from spotrain_operator.control_auth import ControlKey, load_or_create_key
from spotrain_operator.controllers import jobs  # importing registers the handlers
from spotrain_operator.controllers import network as network_index
from spotrain_operator.core.network import NetworkPolicyConfig
from spotrain_operator.leader import ElectionTiming, LeaderElector
from spotrain_protocol import envvars

log = logging.getLogger("spotrain.operator")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: structured logs that any collector parses."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        for key in ("lease", "identity", "job", "node"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # kopf logs every handler call at INFO; quiet by default, as the brief asks.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve_health(port: int, ready: threading.Event) -> None:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                stale = health.LIVENESS.stale()
                ok = not stale
                text = "ok" if ok else "stuck: " + ", ".join(f"{name} silent {age:.0f} s" for name, age in
                                                             stale.items())
            else:
                ok = self.path == "/readyz" and ready.is_set()
                text = "ok" if ok else "not ready"
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(text.encode() + b"\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Health)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


_KUBECONFIG_CLIENT: client.Configuration | None = None
API_THREADS = 64
_BACKGROUND: set[asyncio.Task[None]] = set()  # tasks the loop must keep a reference to


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """With --kubeconfig, kopf connects exactly as the kubernetes client loaded it; in a pod, as usual."""
    c = _KUBECONFIG_CLIENT
    if c is None:
        return kopf.login_via_client(**kwargs)
    token = (c.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
    return kopf.ConnectionInfo(server=c.host, ca_path=c.ssl_ca_cert, certificate_path=c.cert_file,
                               private_key_path=c.key_file, token=token, insecure=not c.verify_ssl)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True  # leadership comes from the Lease, before kopf starts
    settings.posting.enabled = False  # spotrain posts its own events, with reasons users can act on
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # Reconciles make their blocking API calls through asyncio.to_thread, that is in the loop's default executor,
    # which has min(32, CPUs + 4) threads: 6 on two cores. A notice's job must not queue behind fifty others.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(API_THREADS, thread_name_prefix="api"))
    # /healthz fails once the loop that runs every handler and daemon stops scheduling callbacks.
    _BACKGROUND.add(asyncio.get_running_loop().create_task(health.watch_event_loop()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spotrain-operator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="path to a kubeconfig; in-cluster config when omitted")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--leader-elect", action="store_true", help="run only while holding the Lease")
    parser.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    parser.add_argument("--lease-name", default="spotrain-operator")
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds a follower waits without seeing "
                        "the Lease change before it takes over")
    parser.add_argument("--renew-deadline", type=float, default=10.0, help="seconds without a successful renewal "
                        "after which the leader stops (exits); shorter than the lease duration")
    parser.add_argument("--retry-period", type=float, default=2.0, help="seconds between Lease attempts")
    parser.add_argument("--metrics-port", type=int, default=8080, help="0 disables")
    parser.add_argument("--health-port", type=int, default=8081, help="0 disables")
    parser.add_argument("--resync", type=float, default=10.0, help="seconds between reconciles of a quiet job")
    parser.add_argument("--aws-queue-url", help="SQS queue with EventBridge interruption events")
    parser.add_argument("--aws-region")
    parser.add_argument("--aws-endpoint-url", help="for S3/SQS-compatible endpoints")
    parser.add_argument("--aws-queue-max-receives", type=int, default=5,
                        help="delete a queue message that failed this many deliveries (0: never, for a queue with "
                        "a dead-letter redrive policy)")
    parser.add_argument("--log-level", default=os.environ.get(envvars.LOG_LEVEL, "info"))
    parser.add_argument("--control-key-file", default=os.environ.get("SPOTRAIN_CONTROL_KEY_FILE"),
                        help="the key each job's control-endpoint token is derived from (docs/security.md); when "
                        "omitted, kept in the Secret spotrain-control-key of --leader-election-namespace")
    parser.add_argument("--network-policy", action="store_true",
                        help="make each job a NetworkPolicy: only its own pods reach its pods, and on the control "
                        "port also the operator and --network-policy-control-from (docs/security.md)")
    parser.add_argument("--network-policy-operator-namespace", default=os.environ.get("POD_NAMESPACE"),
                        help="the operator's namespace (default: $POD_NAMESPACE)")
    parser.add_argument("--network-policy-operator-labels",
                        help='labels of the operator\'s pods, as a JSON object, e.g. {"app.kubernetes.io/name": '
                        '"spotrain"}')
    parser.add_argument("--network-policy-control-from", default="[]",
                        help="more NetworkPolicyPeers allowed on the control port (e.g. Prometheus), as a JSON list")
    args = parser.parse_args(argv)
    args.network_policy_config = None
    if args.network_policy:
        try:
            args.network_policy_config = NetworkPolicyConfig.parse(
                args.network_policy_operator_namespace, args.network_policy_operator_labels,
                args.network_policy_control_from)
        except ValueError as e:
            parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging(args.log_level)
    configuration = client.Configuration()
    if args.kubeconfig:
        global _KUBECONFIG_CLIENT
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
        _KUBECONFIG_CLIENT = configuration
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = API_THREADS  # one kept-alive connection per API thread
    api_client = client.ApiClient(configuration)
    ready = threading.Event()
    if args.health_port:
        _serve_health(args.health_port, ready)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    elector = None
    if args.leader_elect:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        try:
            timing = ElectionTiming(args.lease_duration, args.renew_deadline, args.retry_period)
        except ValueError as e:
            log.error("%s", e)
            return 2
        elector = LeaderElector(api_client, args.leader_election_namespace, args.lease_name, identity, timing)
        ready.set()  # a standby replica is healthy and ready; it just does not act
        elector.acquire()
        elector.keep()
    metrics.set_leader(True)  # the Lease holder, or the only replica (alerts fire when no replica leads)
    control_key = (ControlKey.from_file(args.control_key_file) if args.control_key_file
                   else load_or_create_key(api_client, args.leader_election_namespace))
    # What every handler shares, given to kopf as its memo. kopf hands each resource object a shallow copy
    # (kopf/_core/reactor/inventory.py): the copies share the Runtime's containers (wake-ups, node views), which
    # the handlers only mutate, never rebind.
    runtime = jobs.Runtime(Cluster(api_client), resync_seconds=args.resync, control_key=control_key,
                           network_policy=args.network_policy_config)
    if args.network_policy_config:
        network_index.register()
    stop = threading.Event()
    if args.aws_queue_url:
        from spotrain_operator.awsqueue import start_queue_consumer

        start_queue_consumer(api_client, args.aws_queue_url, args.aws_region, args.aws_endpoint_url, stop,
                             max_receives=args.aws_queue_max_receives)
    ready.set()
    log.info("operator starting")
    try:
        asyncio.run(kopf.operator(clusterwide=not args.namespace, namespaces=args.namespace or [],
                                  standalone=True, memo=runtime))
    finally:
        stop.set()
        if elector is not None:
            elector.release()  # kopf has stopped: hand the Lease over now instead of after a whole lease
    return 0


if __name__ == "__main__":
    sys.exit(main())
