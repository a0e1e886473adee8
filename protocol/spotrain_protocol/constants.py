"""Ports, paths, file names and headers the operator and the trainer both use."""

from __future__ import annotations

#: The workers' control endpoint (spotrain_trainer.server): the operator's containerPort and the port it calls.
CONTROL_PORT = 8470
#: The job's c10d rendezvous store, unless spec.rendezvous.port says otherwise.
RENDEZVOUS_PORT = 29400

# -- the control endpoint's HTTP interface ---------------------------------------------------------------
STATUS_PATH = "/status"
CHECKPOINT_PATH = "/checkpoint"
#: Where the operator tells a worker that the rendezvous store moved (messages.RendezvousMove).
RENDEZVOUS_PATH = "/rendezvous"
#: With the job's control token configured, /status and /checkpoint need ``Authorization: Bearer <token>``.
AUTHORIZATION_HEADER = "Authorization"
BEARER_SCHEME = "Bearer"

# -- the per-pod state directory (shared by the control server and the local rank 0 worker) ----------------
DEFAULT_STATE_DIR = "/tmp/spotrain-state"
REQUEST_FILE = "request.json"  # written by the control server only
STATUS_FILE = "status.json"  # written by the local rank 0 worker only
RENDEZVOUS_FILE = "rendezvous.json"  # written by the control server only, read by the agent (a moved store)

#: Where the trainer writes its termination message (the completion record); kubelet reads it from here.
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def authorization(token: str | None) -> dict[str, str]:
    """The request header that carries the job's control token; none without a token."""
    return {AUTHORIZATION_HEADER: f"{BEARER_SCHEME} {token}"} if token else {}


def presented_token(header: str | None) -> str | None:
    """The token an ``Authorization`` header value presents with the bearer scheme (any case); None otherwise."""
    scheme, _, given = (header or "").partition(" ")
    return given.strip() if scheme.lower() == BEARER_SCHEME.lower() else None
