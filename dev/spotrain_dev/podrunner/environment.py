"""How kubelet builds a container's environment, as pure functions over plain API objects (dicts as the API
serves them): ``envFrom``, then ``env`` in order with ``$(VAR)`` expansion, the downward API's ``fieldRef``, and
Secret and ConfigMap keys. No I/O: the caller reads the Secrets and ConfigMaps a container names
(:func:`referenced_objects`) and passes what exists."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class WaitingError(Exception):
    """A container cannot start yet (a missing Secret, no rendezvous store yet): retried."""


# Kubernetes' expansion (k8s.io/kubernetes third_party/forked/golang/expansion/expand.go, used by kubelet for env
# values, command and args): after a "$", "$" is an escaped "$"; "(" up to the next ")" is a reference, replaced
# by the variable's value or, when it is not defined, left as written (a name may contain anything but ")",
# "$(A$(B))" included); "(" without a ")" after it, or any other character, is copied with the "$"; a "$" at the
# end stays. One regex alternative per case of its tryReadVariableName.
_EXPANSION = re.compile(r"\$(?:(\$)|\(([^)]*)\)|(.))", re.DOTALL)


def expand(value: str, env: Mapping[str, str]) -> str:
    """``value`` with its ``$(VAR)`` references to ``env`` replaced, as kubelet expands them."""

    def sub(m: re.Match[str]) -> str:
        escaped, name, other = m.groups()
        if escaped is not None:
            return "$"
        if name is not None:
            return env[name] if name in env else m.group(0)
        return "$" + other

    return _EXPANSION.sub(sub, value)


_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's ``fieldRef`` paths (an unset field is empty)."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"), "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"), "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i.get("ip", "") for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i.get("ip", "") for i in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD_SUBSCRIPT.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise WaitingError(f"fieldRef {path!r} is not supported")


@dataclass(frozen=True)
class NamespaceObjects:
    """What a container may read of its namespace: Secrets (decoded) and ConfigMaps by name, that exist."""

    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def referenced_objects(container: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The names of the Secrets and of the ConfigMaps that ``container``'s ``envFrom`` and ``env`` refer to."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config_maps.add(source["configMapRef"]["name"])
        elif "secretRef" in source:
            secrets.add(source["secretRef"]["name"])
    for item in container.get("env") or []:
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            secrets.add(source["secretKeyRef"]["name"])
        elif "configMapKeyRef" in source:
            config_maps.add(source["configMapKeyRef"]["name"])
    return secrets, config_maps


def _data(objects: NamespaceObjects, namespace: str, kind: str, name: str, optional: bool) -> Mapping[str, str]:
    found = (objects.secrets if kind == "Secret" else objects.config_maps).get(name)
    if found is None:
        if optional:
            return {}
        raise WaitingError(f"{kind} {namespace}/{name}: Not Found")
    return found


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], objects: NamespaceObjects) -> dict[str, str]:
    """The environment the container's spec gives it: ``envFrom``, then ``env`` in order, each value expanded
    against the variables before it. Raises :class:`WaitingError` for what is missing (a non-optional Secret,
    ConfigMap or key) or not supported."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = _data(objects, ns, "ConfigMap", ref["name"], bool(ref.get("optional")))
        else:
            ref = source["secretRef"]
            data = _data(objects, ns, "Secret", ref["name"], bool(ref.get("optional")))
        env.update({prefix + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
            optional = bool(ref.get("optional"))
            data = _data(objects, ns, kind, ref["name"], optional)
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not optional:
                raise WaitingError(f"key {ref['key']!r} not in {kind} {ns}/{ref['name']} (env {name})")
        else:
            raise WaitingError(f"env {name}: only fieldRef, secretKeyRef and configMapKeyRef are supported")
    return env
