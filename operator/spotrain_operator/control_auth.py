"""The per-job credential for the workers' control endpoint (POST /checkpoint, GET /status).

The operator holds one secret key and derives each job's token from it: ``HMAC-SHA256(key, job UID)``. So the
operator never reads a Secret to talk to a job (it only creates the job's Secret, owned by the job, that the
workers take the token from), a restarted operator or the other replica derives the same token, and a job
created again under the same name (a new UID) gets a new token. Rotating the key changes every job's token:
running jobs then refuse the operator until their workers are recreated (docs/security.md).

The key comes from a file (``--control-key-file``, which the Helm chart mounts from a Secret it creates once and
keeps across upgrades). Without one, the operator keeps a generated key in a Secret in its own namespace
(``load_or_create_key``), which needs ``get`` on that one Secret and ``create`` on Secrets there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("spotrain.control_auth")
KEY_BYTES = 32
SECRET_KEY_FIELD = "key"
DEFAULT_KEY_SECRET = "spotrain-control-key"
TIMEOUT = (5.0, 30.0)


@dataclass(frozen=True)
class ControlKey:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("the control key must be at least 16 bytes")

    def token_for(self, job_uid: str) -> str:
        return hmac.new(self.key, job_uid.encode(), hashlib.sha256).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> ControlKey:
        """The file's bytes, surrounding whitespace stripped (a key written by ``openssl rand -hex 32`` or by the
        chart works as is)."""
        return cls(Path(path).read_bytes().strip())

    @classmethod
    def generate(cls) -> ControlKey:
        return cls(secrets.token_hex(KEY_BYTES).encode())


def load_or_create_key(api_client: client.ApiClient, namespace: str, name: str = DEFAULT_KEY_SECRET) -> ControlKey:
    """The key kept in the Secret ``namespace/name``, created with a random key if it does not exist. Two
    replicas starting together agree: the one whose create loses (409) reads the winner's."""
    core = client.CoreV1Api(api_client)
    for _ in range(3):
        try:
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=TIMEOUT)
            data = secret.data or {}
            if SECRET_KEY_FIELD not in data:
                raise RuntimeError(f"Secret {namespace}/{name} has no {SECRET_KEY_FIELD!r} key; delete it or add one")
            return ControlKey(base64.b64decode(data[SECRET_KEY_FIELD]))
        except ApiException as e:
            if e.status != 404:
                raise
        key = ControlKey.generate()
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                         labels={"app.kubernetes.io/name": "spotrain"}),
            type="Opaque",
            data={SECRET_KEY_FIELD: base64.b64encode(key.key).decode()},
        )
        try:
            core.create_namespaced_secret(namespace, body, _request_timeout=TIMEOUT)
            log.info("generated the control key in Secret %s/%s", namespace, name)
            return key
        except ApiException as e:
            if e.status != 409:
                raise
    raise RuntimeError(f"could not read or create the control key Secret {namespace}/{name}")
