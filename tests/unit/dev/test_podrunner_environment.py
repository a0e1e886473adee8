"""The pod runner's environment resolver: Kubernetes' ``$(VAR)`` expansion (the table of
k8s.io/kubernetes third_party/forked/golang/expansion/expand_test.go, and properties), the downward API, and
Secret/ConfigMap references with kubelet's optional/missing rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotrain_dev.podrunner.environment import (
    NamespaceObjects,
    WaitingError,
    container_env,
    expand,
    field_ref,
    referenced_objects,
)

CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}

# (input, expected) from expand_test.go's doExpansionTest, in its order.
KUBERNETES_CASES = [
    ("$(VAR_A)", "A"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("$(VAR_A)-1", "A-1"),
    ("___$(VAR_B)___", "___B___"),
    ("___$(VAR_C)", "___C"),
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("$(VAR_REF)", "$(VAR_A)"),
    ("%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("$?_boo_$!", "$?_boo_$!"),
    ("$VAR_A", "$VAR_A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),
    ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("$$$$$$$(VAR_A)", "$$$A"),
    ("$VAR_A)", "$VAR_A)"),
    ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"),
    ("$(VAR_C)_______$(", "C_______$("),
    ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("--$($($($($--", "--$($($($($--"),
    ("$($($($($--foo$(", "$($($($($--foo$("),
    ("foo0--$($($($(", "foo0--$($($($("),
    ("$(foo$$var)", "$(foo$$var)"),
    ("\n", "\n"),
]


@pytest.mark.parametrize(("value", "expected"), KUBERNETES_CASES)
def test_expand_matches_kubernetes(value: str, expected: str) -> None:
    assert expand(value, CONTEXT) == expected


names = st.text(st.characters(blacklist_characters=")"), max_size=12)
env_values = st.dictionaries(names, st.text(max_size=12), max_size=4)


@given(st.text(), env_values)
def test_escaping_every_dollar_gives_the_text_back(text: str, env: dict[str, str]) -> None:
    """``$$`` is a literal ``$``: a value with every ``$`` doubled expands to itself, whatever is defined."""
    assert expand(text.replace("$", "$$"), env) == text


@given(st.text(st.characters(blacklist_characters="$")), env_values)
def test_text_without_a_dollar_is_unchanged(text: str, env: dict[str, str]) -> None:
    assert expand(text, env) == text


@given(names, st.text(st.characters(blacklist_characters="$"), max_size=8), st.text(max_size=8))
def test_an_unknown_reference_is_left_as_written(name: str, around: str, value: str) -> None:
    other = {f"{name}x": value}  # defined names that are not this one
    assert expand(f"{around}$({name}){around}", other) == f"{around}$({name}){around}"


@given(names, st.text(max_size=8), st.text(st.characters(blacklist_characters="$"), max_size=8))
def test_a_defined_reference_is_replaced_once(name: str, value: str, around: str) -> None:
    """The value is inserted as it is: references in it are not expanded again."""
    assert expand(f"{around}$({name}){around}", {name: value}) == f"{around}{value}{around}"


POD: dict[str, Any] = {
    "metadata": {"name": "job-w-0", "namespace": "ns", "uid": "u-1", "labels": {"spotrain.dev/job": "job"},
                 "annotations": {"a.b/c": "d"}},
    "spec": {"nodeName": "node-1", "serviceAccountName": "sa"},
    "status": {"podIP": "127.1.0.5", "hostIP": "10.0.0.1", "podIPs": [{"ip": "127.1.0.5"}]},
}


@pytest.mark.parametrize(("path", "expected"), [
    ("metadata.name", "job-w-0"), ("metadata.namespace", "ns"), ("metadata.uid", "u-1"),
    ("spec.nodeName", "node-1"), ("spec.serviceAccountName", "sa"), ("status.podIP", "127.1.0.5"),
    ("status.hostIP", "10.0.0.1"), ("status.podIPs", "127.1.0.5"), ("status.hostIPs", ""),
    ("metadata.labels['spotrain.dev/job']", "job"), ("metadata.annotations['a.b/c']", "d"),
    ("metadata.labels['missing']", ""),
])
def test_field_ref(path: str, expected: str) -> None:
    assert field_ref(POD, path) == expected


def test_an_unsupported_field_ref_waits_naming_it() -> None:
    with pytest.raises(WaitingError, match=r"spec\.nodeSelector"):
        field_ref(POD, "spec.nodeSelector")


CONTAINER: dict[str, Any] = {
    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
    "env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "URL", "value": "http://$(POD):$(CFG_PORT)/$(LATER)"},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}}},
        {"name": "LATER", "value": "x"},
    ],
}
OBJECTS = NamespaceObjects(secrets={"creds": {"key": "s3cr3t"}}, config_maps={"settings": {"PORT": "8470"}})


def test_container_env_in_kubelets_order() -> None:
    env = container_env(POD, CONTAINER, OBJECTS)
    # envFrom first (with its prefix), then env in order: a reference to a later variable stays as written.
    assert env == {"CFG_PORT": "8470", "key": "s3cr3t", "POD": "job-w-0", "URL": "http://job-w-0:8470/$(LATER)",
                   "KEY": "s3cr3t", "LATER": "x"}


def test_referenced_objects() -> None:
    assert referenced_objects(CONTAINER) == ({"creds"}, {"settings", "gone"})


def test_a_missing_secret_waits_naming_it() -> None:
    with pytest.raises(WaitingError, match="Secret ns/creds: Not Found"):
        container_env(POD, CONTAINER, NamespaceObjects(config_maps=OBJECTS.config_maps))


def test_a_missing_key_waits_naming_it_and_the_variable() -> None:
    objects = NamespaceObjects(secrets={"creds": {}}, config_maps=OBJECTS.config_maps)
    with pytest.raises(WaitingError, match=r"key 'key' not in Secret ns/creds \(env KEY\)"):
        container_env(POD, CONTAINER, objects)


def test_optional_references_to_missing_objects_are_skipped() -> None:
    container = {"envFrom": [{"secretRef": {"name": "none", "optional": True}}],
                 "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": True}}}]}
    assert container_env(POD, container, NamespaceObjects()) == {}
