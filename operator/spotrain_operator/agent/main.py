"""``spotrain-agent``: poll the instance metadata service, mark this Node when it is about to be reclaimed.

    spotrain-agent --provider aws|gcp|azure|auto --node-name $NODE_NAME [--metadata-url URL] [--interval 2]
                   [--kubeconfig PATH]

In-cluster configuration by default; the Node's name comes from the downward API (env NODE_NAME). RBAC:
``get`` and ``patch`` on nodes. ``auto`` picks the provider from the Node's ``spec.providerID``; on a provider it
does not know (kind's ``kind://``, KWOK's ``kwok://``) the agent idles: healthy and ready, polling nothing, so
that a DaemonSet on such nodes neither crash-loops nor blocks ``helm --wait``.
The loop never exits on errors: an unreachable, slow or garbled metadata service is retried with backoff and
reported (rate-limited); a Node that cannot be patched is retried on the next poll.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from kubernetes import client, config

from spotrain_operator.agent import aws_imds, azure_events, gcp_metadata, health
from spotrain_operator.agent.interruption import Interruption, MetadataError, format_rfc3339
from spotrain_operator.agent.node_marker import NodeMarker, is_drained

log = logging.getLogger("spotrain.agent")

PROVIDERS = ("aws", "gcp", "azure")
DEFAULT_URLS = {"aws": aws_imds.DEFAULT_URL, "gcp": gcp_metadata.DEFAULT_URL, "azure": azure_events.DEFAULT_URL}
DEFAULT_INTERVALS = {"aws": 2.0, "gcp": 2.0, "azure": 1.0}
PROVIDER_ID_PREFIXES = {"aws://": "aws", "gce://": "gcp", "azure://": "azure"}


class Source(Protocol):
    def poll(self) -> Interruption | None: ...


def provider_from_provider_id(provider_id: str | None) -> str | None:
    for prefix, provider in PROVIDER_ID_PREFIXES.items():
        if provider_id and provider_id.startswith(prefix):
            return provider
    return None


class Agent:
    """The poll loop. ``step()`` is one poll (for tests); ``run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        source: Source,
        marker: NodeMarker,
        node_name: str,
        interval: float = 2.0,
        max_backoff: float = 10.0,
        recheck: float = 60.0,
        azure: azure_events.AzureEventsClient | None = None,
        state: health.HealthState | None = None,
        warn_period: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.marker = marker
        self.node_name = node_name
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.recheck = recheck  # re-read the Node this often even when nothing new was seen
        self.azure = azure
        self.state = state or health.HealthState(stale_after=max(30.0, 10 * interval))
        self._monotonic = monotonic
        self.warn = health.RateLimitedLogger(log, warn_period, monotonic)
        self.failures = 0  # consecutive failed metadata polls
        self.applied: Interruption | None = None  # what the Node is known to carry
        self._applied_at = 0.0

    # -- one poll --------------------------------------------------------------------------------------------

    def step(self) -> float:
        """Polls once, marks and acknowledges as needed; returns how long to wait before the next poll."""
        started = self._monotonic()
        try:
            interruption = self.source.poll()
        except MetadataError as e:
            return self._metadata_failed(str(e))
        except Exception as e:  # a bug or an unforeseen answer must not kill the agent
            log.debug("poll failed", exc_info=True)
            return self._metadata_failed(f"{type(e).__name__}: {e}")
        if self.failures:
            log.info("metadata service reachable again", extra={"fields": {"after_failures": self.failures}})
            self.warn.reset("metadata")
        self.failures = 0
        health.POLLS.labels("ok").inc()
        health.METADATA_UP.set(1)
        self.state.beat(True)
        if interruption is not None:
            health.INTERRUPTIONS.labels(interruption.kind).inc()
            self._apply(interruption)
        if self.azure is not None:
            self._acknowledge()
        return max(0.0, self.interval - (self._monotonic() - started))

    def _metadata_failed(self, error: str) -> float:
        self.failures += 1
        health.POLLS.labels("error").inc()
        health.METADATA_UP.set(0)
        self.state.beat(False, error)
        backoff = min(self.max_backoff, self.interval * 2 ** min(self.failures - 1, 10))
        self.warn.log(logging.WARNING, "metadata", "cannot reach the metadata service; will keep polling",
                      error=error, consecutive_failures=self.failures, retry_in_s=round(backoff, 1))
        return backoff

    def _already_applied(self, i: Interruption) -> bool:
        a = self.applied
        if a is None or self._monotonic() - self._applied_at >= self.recheck:
            return False
        if (a.kind, a.event_id) != (i.kind, i.event_id):
            return False
        # A later or equal deadline changes nothing on the Node (only an earlier one is news).
        return i.deadline is None or (a.deadline is not None and i.deadline >= a.deadline)

    def _apply(self, interruption: Interruption) -> None:
        if self._already_applied(interruption):
            return
        try:
            result = self.marker.mark(self.node_name, interruption)
        except Exception as e:
            health.PATCHES.labels("error").inc()
            self.warn.log(logging.WARNING, "patch", "cannot mark the node; will retry", node=self.node_name,
                          kind=interruption.kind, error=_short(e))
            return
        self.warn.reset("patch")
        self.applied = interruption
        self._applied_at = self._monotonic()
        self.state.marked = interruption.kind
        health.PATCHES.labels("changed" if result.changed else "unchanged").inc()
        if result.changed:
            log.info("marked node for interruption", extra={"fields": {
                "node": self.node_name,
                "kind": interruption.kind,
                "deadline": format_rfc3339(interruption.deadline) if interruption.deadline else None,
                "event": interruption.event_id,
                "detail": interruption.detail,
            }})

    def _acknowledge(self) -> None:
        azure = self.azure
        assert azure is not None
        if self.applied is None:
            return  # acknowledge only what the Node has been told about
        if not azure.unacknowledged():
            return
        try:
            drained = is_drained(self.marker.read(self.node_name))
        except Exception as e:
            # Without the Node, NotBefore - 5 s still triggers the acknowledgement.
            self.warn.log(logging.WARNING, "read", "cannot read the node", node=self.node_name, error=_short(e))
            drained = False
        try:
            sent = azure.acknowledge_due(drained)
        except MetadataError as e:
            health.ACKS.labels("error").inc()
            self.warn.log(logging.WARNING, "ack", "cannot acknowledge the scheduled event; will retry",
                          error=str(e))
            return
        if sent:
            health.ACKS.labels("ok").inc(len(sent))
            log.info("acknowledged scheduled events", extra={"fields": {
                "events": ",".join(sent), "reason": "drained" if drained else "NotBefore is near"}})

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.step()
            except Exception:  # step handles its errors; this is the last line of defence
                log.exception("unexpected error in the poll loop")
                wait = self.max_backoff
            stop.wait(wait)


def _short(e: BaseException) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status is not None:
        return f"{type(e).__name__}: {status} {reason or ''}".strip()
    return f"{type(e).__name__}: {e}"[:300]


# -- command line ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spotrain-agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", choices=(*PROVIDERS, "auto"), default="auto",
                   help="metadata service to poll; auto: from the Node's spec.providerID")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this Node (default: $NODE_NAME, from the downward API)")
    p.add_argument("--metadata-url", help="base URL of the metadata service (default: the cloud's)")
    p.add_argument("--interval", type=float, help="seconds between polls (default: aws/gcp 2, azure 1)")
    p.add_argument("--timeout", type=float, default=2.0, help="metadata request timeout in seconds")
    p.add_argument("--max-backoff", type=float, default=10.0,
                   help="longest wait between polls while the metadata service fails")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    p.add_argument("--vm-name", action="append", default=[],
                   help="azure: this VM's name as Scheduled Events list it in Resources (default: from IMDS "
                        "compute/name and the Node's providerID)")
    p.add_argument("--gcp-wait-seconds", type=int, default=60,
                   help="gcp: timeout_sec of the hanging wait_for_change request")
    p.add_argument("--scheduled-events", action="store_true",
                   help="aws: also mark the node for active EC2 scheduled events (aws-scheduled)")
    p.add_argument("--health-port", type=int, default=0,
                   help="serve /healthz, /readyz and /metrics on this port (0: off)")
    p.add_argument("--health-bind", default="0.0.0.0", help="address of the health endpoint")
    p.add_argument("--warn-every", type=float, default=60.0,
                   help="log a repeated warning (metadata service or Node unreachable) at most this often, seconds")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name (or $NODE_NAME) is required")
    if args.interval is not None and args.interval <= 0:
        p.error("--interval must be positive")
    return args


def kube_api(kubeconfig: str | None) -> client.CoreV1Api:
    if kubeconfig:
        return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


def read_provider_id(marker: NodeMarker, node_name: str, stop: threading.Event,
                     wait: bool, warn: health.RateLimitedLogger) -> str | None:
    """The Node's spec.providerID; with ``wait``, retries until the Node can be read and has one."""
    delay = 1.0
    while not stop.is_set():
        try:
            node = marker.read(node_name)
            provider_id = node.spec.provider_id if node.spec is not None else None
            if provider_id or not wait:
                return provider_id
            warn.log(logging.WARNING, "providerid", "the node has no spec.providerID yet", node=node_name)
        except Exception as e:
            if not wait:
                return None
            warn.log(logging.WARNING, "providerid", "cannot read the node", node=node_name, error=_short(e))
        stop.wait(delay)
        delay = min(delay * 2, 30.0)
    return None


def build_source(args: argparse.Namespace, provider: str, provider_id: str | None
                 ) -> tuple[Source, azure_events.AzureEventsClient | None]:
    url = args.metadata_url or DEFAULT_URLS[provider]
    if provider == "aws":
        return aws_imds.ImdsClient(url, args.timeout, scheduled_events=args.scheduled_events), None
    if provider == "gcp":
        return gcp_metadata.GcpMetadataClient(url, args.timeout, wait_seconds=args.gcp_wait_seconds), None
    names = list(args.vm_name)
    if not names:
        derived = azure_events.vm_name_from_provider_id(provider_id)
        if derived:
            names.append(derived)
    azure = azure_events.AzureEventsClient(url, args.timeout, vm_names=names, lookup_name=not args.vm_name)
    return azure, azure


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    health.setup_logging(args.log_level, args.log_format)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(args, NodeMarker(kube_api(args.kubeconfig)), stop)


def run(args: argparse.Namespace, marker: NodeMarker, stop: threading.Event) -> int:
    """The agent until ``stop`` is set: resolves the provider, then polls, or idles on an unknown provider."""
    warn = health.RateLimitedLogger(log, args.warn_every)
    provider = args.provider
    provider_id = None
    if provider in ("auto", "azure"):
        provider_id = read_provider_id(marker, args.node_name, stop, wait=provider == "auto", warn=warn)
        if stop.is_set():
            return 0
    if provider == "auto":
        detected = provider_from_provider_id(provider_id)
        if detected is None:
            return idle(args, provider_id, stop)
        provider = detected

    source, azure = build_source(args, provider, provider_id)
    interval = args.interval or DEFAULT_INTERVALS[provider]
    state = health.HealthState(stale_after=max(30.0, 10 * interval + 4 * args.timeout + args.gcp_wait_seconds))
    state.provider, state.node = provider, args.node_name
    health.INFO.labels(provider).set(1)
    agent = Agent(source, marker, args.node_name, interval=interval, max_backoff=args.max_backoff, azure=azure,
                  state=state, warn_period=args.warn_every)
    server = health.serve(state, args.health_bind, args.health_port) if args.health_port else None
    log.info("spotrain-agent started", extra={"fields": {
        "node": args.node_name, "provider": provider,
        "metadata_url": args.metadata_url or DEFAULT_URLS[provider], "interval_s": interval,
        "health_port": server.server_address[1] if server else None,
    }})

    # The loop runs in a thread so that a signal ends the process at once, even during a hanging GET.
    loop = threading.Thread(target=agent.run, args=(stop,), name="poll", daemon=True)
    loop.start()
    while not stop.wait(1.0):
        if not loop.is_alive():  # cannot happen: run() catches everything; exit so the kubelet restarts us
            log.error("the poll loop ended unexpectedly")
            return 1
    loop.join(timeout=0.5)
    if server is not None:
        server.shutdown()
    return 0


def idle(args: argparse.Namespace, provider_id: str | None, stop: threading.Event) -> int:
    """No metadata service to poll (a kind or KWOK node, or a cloud spotrain does not know): stay up, healthy
    and ready, and say so once. Exiting instead would crash-loop the DaemonSet."""
    state = health.HealthState(stale_after=60.0)  # not used: an idle agent is always alive
    state.node = args.node_name
    state.go_idle(provider_id)
    health.INFO.labels(health.IDLE_PROVIDER).set(1)
    server = health.serve(state, args.health_bind, args.health_port) if args.health_port else None
    log.info("no metadata service known for this node's provider; idling (pass --provider to poll one)",
             extra={"fields": {"node": args.node_name, "providerID": provider_id,
                               "health_port": server.server_address[1] if server else None}})
    stop.wait()
    if server is not None:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
