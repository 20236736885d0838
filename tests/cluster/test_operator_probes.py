"""The operator against the real API server: what a probe's status says when it cannot measure, the
finalizer, and an operator restart.

Pods here are bare Pod objects with no process (as the API shows a pod before a kubelet starts it, or on
a node without a Mace agent), so these tests need neither traffic nor the agent.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from harness_client import Cluster, harness, unique, wait_for
from kubernetes.client.exceptions import ApiException
from operator_helpers import AGENT_LABELS, MERGE_PATCH, BarePods, condition, wait_reason

from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

TWICE = {"corr": ["ip_proto", "ip_prot0", "icmp_seq"]}
"""A flow spec that passes the schema (an alias) but not the models: the field is listed twice."""


def probes(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return {p["metadata"]["name"]: p for p in listed}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_missing_pod(cluster: Cluster, namespace: str) -> None:
    cluster.create_probe(namespace, "lost", "no-such-pod")
    status = wait_reason(cluster, namespace, "lost", "PodNotFound")
    assert status["phase"] == "Failed"
    assert f"pod {namespace}/no-such-pod does not exist" in condition(status, "Resolved")["message"]
    assert condition(status, "Measuring")["status"] == "False"
    assert not {"filter", "node", "procIds"} & set(status)


def test_pod_not_running_then_deleted(cluster: Cluster, namespace: str, pods: BarePods) -> None:
    pods.create(namespace, "sleepy", cluster.node)
    cluster.create_probe(namespace, "waits", "sleepy")
    status = wait_reason(cluster, namespace, "waits", "PodNotRunning")
    assert status["phase"] == "Pending"
    assert status["node"] == cluster.node
    assert "is Pending, not Running" in condition(status, "Resolved")["message"]
    pods.delete(namespace, "sleepy")
    status = wait_reason(cluster, namespace, "waits", "PodNotFound")
    assert status["phase"] == "Failed" and status["node"] == cluster.node


def test_container_not_in_pod(cluster: Cluster, namespace: str, pods: BarePods) -> None:
    pods.create(namespace, "web", cluster.node)
    cluster.create_probe(namespace, "wrong-container", "web", container="db")
    status = wait_reason(cluster, namespace, "wrong-container", "ContainerNotFound")
    assert status["phase"] == "Failed"
    assert "has no container db (it has: main)" in condition(status, "Resolved")["message"]


def test_invalid_filter_is_a_condition_and_a_fix_clears_it(cluster: Cluster, namespace: str) -> None:
    cluster.create_probe(namespace, "twice", "no-such-pod", **{"in": TWICE})
    status = wait_reason(cluster, namespace, "twice", "InvalidFilter")
    assert status["phase"] == "Failed"
    assert condition(status, "Resolved")["message"] == "spec.in.corr: field listed twice: ip_proto"
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "twice",
                                                  {"spec": {"in": {"corr": ["icmp_id", "icmp_seq"]}}},
                                                  _content_type=MERGE_PATCH)
    status = wait_reason(cluster, namespace, "twice", "PodNotFound")
    assert status["observedGeneration"] == 2


def test_unknown_field_is_refused_by_the_api_server(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        cluster.create_probe(namespace, "typo", "p", **{"out": {"corr": ["icmp_seqq"]}})
    assert refused.value.status == 422
    assert 'spec.out.corr[0]: Unsupported value: \\"icmp_seqq\\"' in str(refused.value.body)
    assert cluster.probe(namespace, "typo") is None


def test_no_agent_on_node_then_an_unreachable_agent(cluster: Cluster, namespace: str, pods: BarePods) -> None:
    node = unique("node-without-agent")
    pods.create(namespace, "far", node)
    pods.running(namespace, "far", "10.250.0.9")
    cluster.create_probe(namespace, "far", "far")
    status = wait_reason(cluster, namespace, "far", "NoAgentOnNode")
    assert (status["phase"], status["node"]) == ("Pending", node)
    assert f"no ready Mace agent on node {node}" == condition(status, "Resolved")["message"]
    # An agent Pod becomes Ready on that node, but nothing listens where it says: the probe is retried
    # as soon as the agent appears, and the condition says why it still cannot measure.
    port = closed_port()
    pods.create(namespace, "mace-agent-far", node, labels=AGENT_LABELS,
                           ports=[{"name": "http", "containerPort": port}])
    pods.running(namespace, "mace-agent-far", "127.0.0.1")
    status = wait_reason(cluster, namespace, "far", "AgentError")
    assert status["phase"] == "Pending"
    message = condition(status, "Resolved")["message"]
    assert f"agent mace-agent-far on {node} (http://127.0.0.1:{port})" in message


def test_deleting_a_probe_releases_its_finalizer(cluster: Cluster, namespace: str) -> None:
    cluster.create_probe(namespace, "short-lived", "no-such-pod")
    probe = wait_for("the finalizer", lambda: (p := cluster.probe(namespace, "short-lived")) and
                     "mace.dev/stop-measurement" in p["metadata"].get("finalizers", ()) and p, 10)
    assert probe is not None
    cluster.delete_probe(namespace, "short-lived")
    wait_for("the probe to go", lambda: cluster.probe(namespace, "short-lived") is None, 10)


def test_operator_restart_neither_rewrites_nor_loses_probes(cluster: Cluster, namespace: str,
                                                            pods: BarePods) -> None:
    cluster.create_probe(namespace, "lost", "no-such-pod")
    cluster.create_probe(namespace, "twice", "no-such-pod", **{"in": TWICE})
    pods.create(namespace, "far", unique("node-without-agent"))
    pods.running(namespace, "far", "10.250.0.9")
    cluster.create_probe(namespace, "far", "far")
    for name, reason in (("lost", "PodNotFound"), ("twice", "InvalidFilter"), ("far", "NoAgentOnNode")):
        wait_reason(cluster, namespace, name, reason)
    before = probes(cluster, namespace)

    harness("restart", "operator")

    # A probe made after the restart is handled: the new operator has listed and resumed everything.
    cluster.create_probe(namespace, "after", "no-such-pod")
    wait_reason(cluster, namespace, "after", "PodNotFound")
    after = probes(cluster, namespace)
    assert set(after) == {*before, "after"}
    for name, probe in before.items():
        assert after[name]["metadata"]["resourceVersion"] == probe["metadata"]["resourceVersion"], name
        assert after[name]["status"] == probe["status"]


def test_a_pod_created_after_its_probe_is_picked_up(cluster: Cluster, namespace: str, pods: BarePods) -> None:
    name = unique("late")
    cluster.create_probe(namespace, "early", name)
    wait_reason(cluster, namespace, "early", "PodNotFound")
    pods.create(namespace, name, cluster.node)
    status = wait_reason(cluster, namespace, "early", "PodNotRunning")
    assert status["phase"] == "Pending"
