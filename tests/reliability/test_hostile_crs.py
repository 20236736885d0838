"""Hostile but valid-looking LatencyProbes: the API server refuses what Linux or the rules refuse, and a
probe the operator cannot measure is still always deletable (issue 12, defects 1 and 4)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness_client import ICMP, Cluster, wait_for
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

BIG_ANNOTATION_BYTES = 200_000
"""The issue's case: accepted by the API server (objects may be 256 KiB less kopf's bookkeeping)."""
DELETE_BOUND_S = 20.0
"""The operator's grace for an agent's stop (10 s) and then some."""


def body(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LatencyProbe", "metadata": {"name": name},
            "spec": {"pod": "some-pod", "in": ICMP, "out": ICMP, **spec}}


def refusal(cluster: Cluster, namespace: str, probe: dict[str, Any]) -> str | None:
    """The API server's message if it refuses ``probe`` (a dry run), else None."""
    try:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probe,
                                                       dry_run="All")
    except ApiException as error:
        assert error.status == 422, error.body
        return str(json.loads(error.body)["message"])
    return None


@pytest.mark.parametrize("device", [".", "..", "a/b", "a:b", "eth 0", "eth\t0", "x" * 16, "é" * 8, "a\x00b"])
def test_device_names_linux_refuses_are_refused(cluster: Cluster, namespace: str, device: str) -> None:
    message = refusal(cluster, namespace, body("dev", outerDevice=device))
    assert message is not None and "outerDevice" in message, f"{device!r} was accepted"


@pytest.mark.parametrize("device", ["...", ".eth0", "eth0.100", "é" * 7, "x" * 15, "br-0a1b2c3d4e5f"])
def test_device_names_linux_accepts_are_accepted(cluster: Cluster, namespace: str, device: str) -> None:
    assert refusal(cluster, namespace, body("dev", outerDevice=device)) is None


@pytest.mark.parametrize(("what", "spec"), [
    ("unknown field", {"in": {"corr": ["icmp_sq"]}}),
    ("empty corr", {"in": {"corr": []}}),
    ("a field twice", {"in": {"corr": ["icmp_seq", "icmp_seq"]}}),
    ("no per-packet field", {"in": {"corr": ["ip_src"]}}),
    ("two IP families", {"in": {"corr": ["icmp_seq"], "info": ["ip_src", "ip6_src"]}}),
    ("rate 0", {"maxEventsPerSecond": 0}),
    ("rate too high", {"maxEventsPerSecond": 10**9}),
    ("duration negative", {"durationSeconds": -1}),
    ("pod not a DNS name", {"pod": "Pod_1"}),
    ("pod name too long", {"pod": "a" * 254}),
    ("corr of 10,000 fields", {"in": {"corr": ["icmp_seq"] * 10_000}}),
])
def test_hostile_specs_are_refused_at_apply(cluster: Cluster, namespace: str, what: str,
                                            spec: dict[str, Any]) -> None:
    assert refusal(cluster, namespace, body("hostile", **spec)) is not None, what


def test_a_probe_with_a_large_annotation_is_handled_and_deletable(cluster: Cluster, namespace: str) -> None:
    probe = body("big")
    probe["metadata"]["annotations"] = {"example.com/blob": "x" * BIG_ANNOTATION_BYTES}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probe)
    # The operator handles it (its finalizer and status land: the pod does not exist)...
    found = wait_for("the operator to handle the probe",
                     lambda: (p := cluster.probe(namespace, "big")) and (p.get("status") or {}).get("phase")
                     and p, 30)
    assert found["status"]["phase"] == "Failed"
    ours = {k: v for k, v in found["metadata"].get("annotations", {}).items() if k.startswith("mace.dev/")}
    size = sum(len(k) + len(v) for k, v in ours.items())
    print(f"operator bookkeeping on a probe with a {BIG_ANNOTATION_BYTES} B annotation: {size} B "
          f"in {sorted(ours)}")
    assert size < 4096
    # ... and deleting it does not hang.
    began = time.monotonic()
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "big")
    wait_for("the probe to be gone", lambda: cluster.probe(namespace, "big") is None, DELETE_BOUND_S)
    print(f"deleted in {time.monotonic() - began:.1f} s")


def test_a_probe_at_the_annotation_size_limit_is_deletable(cluster: Cluster, namespace: str) -> None:
    """262,000 bytes of annotations leave no room for kopf's own: its patches are refused, and the
    finalizer is released alone."""
    probe = body("near")
    probe["metadata"]["annotations"] = {"example.com/blob": "x" * 262_000}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probe)
    wait_for("the operator's finalizer", lambda: (p := cluster.probe(namespace, "near"))
             and p["metadata"].get("finalizers"), 30)
    began = time.monotonic()
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "near")
    wait_for("the probe to be gone", lambda: cluster.probe(namespace, "near") is None, DELETE_BOUND_S)
    print(f"a probe with 262,000 B of annotations deleted in {time.monotonic() - began:.1f} s")
