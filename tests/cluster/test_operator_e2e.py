"""The operator with the real agent and real traffic: resolving a pinging pod, following its restarts and
deletion, the duration limit, the finalizer, and an operator restart while measuring."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from harness_client import Cluster, harness, wait_for
from kubernetes import watch
from operator_helpers import condition, wait_reason

from mace.grammar import parse
from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster


def measuring_with_samples(cluster: Cluster, namespace: str, name: str, above: int = 0) -> dict[str, Any]:
    return cluster.wait_samples(namespace, name, at_least=above + 1, timeout=30)


def operator_write_time(probe: dict[str, Any]) -> str:
    """When the operator last wrote the probe's status (from the API server's managedFields)."""
    times = [entry["time"] for entry in probe["metadata"]["managedFields"]
             if entry["manager"] == "mace-operator" and entry.get("subresource") == "status"]
    assert len(times) == 1, probe["metadata"]["managedFields"]
    return str(times[0])


def test_pinging_pod_is_resolved_into_the_seed_filter(cluster: Cluster, namespace: str) -> None:
    pod = cluster.ping_pod(namespace, "pinger")
    began = time.monotonic()
    cluster.create_probe(namespace, "icmp", "pinger")
    status = cluster.wait_status(namespace, "icmp", lambda s: s.get("phase") == "Measuring", timeout=15)
    to_measuring = time.monotonic() - began
    resolved = parse(status["filter"])
    assert resolved.proc_id == pod.pid
    assert status["filter"].endswith("in: corr: icmp_id icmp_seq info: icmp_seq "
                                     "out: corr: icmp_id icmp_seq info: icmp_seq")
    assert pod.pid in status["procIds"]
    assert status["node"] == cluster.node
    assert (status["podIP"], status["containerID"]) == (pod.ip, pod.container_id)
    resolved_msg = condition(status, "Resolved")["message"]
    assert f"pod veth {pod.host_veth} " in resolved_msg and f"(ifindex {resolved.dev_id})" in resolved_msg
    assert condition(status, "Measuring")["status"] == "True"
    measuring_with_samples(cluster, namespace, "icmp")
    print(f"apply -> Measuring {to_measuring:.2f}s, -> first samples {time.monotonic() - began:.2f}s")


def test_restarted_process_is_resolved_again_and_measured(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "follows", "pinger")
    before = measuring_with_samples(cluster, namespace, "follows")
    restarted = cluster.restart_pod(namespace, "pinger")
    status = cluster.wait_status(namespace, "follows",
                                 lambda s: s.get("containerID") == restarted.container_id, timeout=15)
    assert parse(status["filter"]).proc_id == restarted.pid != parse(before["filter"]).proc_id
    assert condition(status, "Measuring")["lastTransitionTime"] == condition(before, "Measuring")[
        "lastTransitionTime"], "re-resolving is not a new start"
    cluster.wait_status(namespace, "follows", lambda s: (s.get("results") or {}).get("state") == "Measuring"
                        and f"proc-id: {restarted.pid} " in s["filter"], timeout=15)
    counted = cluster.status(namespace, "follows")["results"]["matched"]
    cluster.wait_samples(namespace, "follows", at_least=counted + 2)


def test_deleted_pod_fails_the_probe_and_stops_the_run(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "orphan", "pinger")
    measuring_with_samples(cluster, namespace, "orphan")
    cluster.delete_pod(namespace, "pinger")
    status = wait_reason(cluster, namespace, "orphan", "PodNotFound", timeout=30)
    assert status["phase"] == "Failed" and "filter" not in status
    assert status["node"] == cluster.node, "the node where it was measured stays"
    cluster.wait_status(namespace, "orphan", lambda s: s["results"]["state"] == "Stopped", timeout=15)


def test_duration_completes_the_probe(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "brief", "pinger", durationSeconds=3)
    status = cluster.wait_status(namespace, "brief", lambda s: s.get("phase") == "Completed", timeout=20)
    assert condition(status, "Measuring")["reason"] == "Completed"
    assert status["filter"], "a completed probe keeps the filter it measured"
    status = cluster.wait_status(namespace, "brief", lambda s: s["results"]["state"] == "Stopped", timeout=15)
    assert status["results"]["matched"] >= 1


def test_delete_waits_for_the_agent_to_stop(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "watched", "pinger")
    measuring_with_samples(cluster, namespace, "watched")
    seen: list[str | None] = []
    started = threading.Event()

    def follow() -> None:
        stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
        started.set()
        for event in stream.stream(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                   PLURAL, field_selector="metadata.name=watched", timeout_seconds=30):
            seen.append(((event["object"].get("status") or {}).get("results") or {}).get("state"))
            if event["type"] == "DELETED":
                stream.stop()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    started.wait(5)
    wait_for("the watch to deliver the probe", lambda: seen, 10)
    cluster.delete_probe(namespace, "watched")
    follower.join(30)
    assert seen[-1] == "Stopped", f"states seen up to the deletion: {seen}"


def test_operator_restart_while_measuring_changes_nothing(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "steady", "pinger")
    measuring_with_samples(cluster, namespace, "steady")
    before = cluster.probe(namespace, "steady")
    assert before is not None
    harness("restart", "operator")
    # The restarted operator has resumed everything once it handles a new probe.
    cluster.create_probe(namespace, "newcomer", "no-such-pod")
    wait_reason(cluster, namespace, "newcomer", "PodNotFound")
    after = cluster.probe(namespace, "steady")
    assert after is not None
    assert operator_write_time(after) == operator_write_time(before)
    kept = ("phase", "filter", "procIds", "conditions", "startedAt", "observedGeneration")
    assert {k: after["status"][k] for k in kept} == {k: before["status"][k] for k in kept}
    counted = after["status"]["results"]["matched"]
    cluster.wait_samples(namespace, "steady", at_least=counted + 2)
    listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert sorted(p["metadata"]["name"] for p in listed) == ["newcomer", "steady"]
