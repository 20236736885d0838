"""Reading a probe's target, and the node's agent, from Pod objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from mace_operator.agents import DEFAULT_PORT, AgentEndpoint, agent_endpoint, select_agent
from mace_operator.pods import PodProblem, PodTarget, target

from mace.probe import Reason


def running(name: str, container_id: str) -> dict[str, Any]:
    return {"name": name, "containerID": container_id,
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}


POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"nodeName": "node-a", "containers": [{"name": "app"}, {"name": "sidecar"}]},
    "status": {"phase": "Running", "podIP": "10.1.0.7",
               "containerStatuses": [running("sidecar", "containerd://s1"),
                                     running("app", "containerd://a1")]},
}


def pod(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(POD)
    for path, value in changes.items():
        node = body
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return body


def test_running_pod_gives_node_ip_and_containers_in_spec_order() -> None:
    expected = PodTarget("node-a", "10.1.0.7", ("containerd://a1", "containerd://s1"))
    assert target(POD, "web", "shop", None) == expected


def test_named_container_only() -> None:
    assert target(POD, "web", "shop", "sidecar") == PodTarget("node-a", "10.1.0.7", ("containerd://s1",))


@pytest.mark.parametrize(("body", "container", "reason", "final"), [
    (None, None, Reason.PodNotFound, True),
    (POD, "db", Reason.ContainerNotFound, True),
    (pod(status__phase="Pending"), None, Reason.PodNotRunning, False),
    (pod(status__phase="Succeeded"), None, Reason.PodNotRunning, True),
    (pod(status__phase="Failed"), None, Reason.PodNotRunning, True),
    (pod(status__podIP=""), None, Reason.PodNotRunning, False),
    (pod(metadata__deletionTimestamp="2025-01-01T00:00:00Z"), None, Reason.PodNotRunning, False),
    (pod(status__containerStatuses=[running("app", "containerd://a1"),
                                    {"name": "sidecar",
                                     "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]),
     None, Reason.PodNotRunning, False),
])
def test_problems(body: dict[str, Any] | None, container: str | None, reason: Reason, final: bool) -> None:
    found = target(body, "web", "shop", container)
    assert isinstance(found, PodProblem)
    assert (found.reason, found.final) == (reason, final)
    assert "web" in found.message


def test_waiting_container_is_named_with_its_reason() -> None:
    waiting = {"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    body = pod(status__containerStatuses=[waiting])
    found = target(body, "web", "shop", "app")
    assert isinstance(found, PodProblem)
    assert "app" in found.message and "ImagePullBackOff" in found.message


LABELS = {"app.kubernetes.io/name": "mace-agent", "app.kubernetes.io/component": "agent"}


def agent_pod(name: str, node: str, *, ready: bool = True, phase: str = "Running", ip: str = "192.0.2.1",
              labels: dict[str, str] | None = None,
              ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "mace-system",
                     "labels": LABELS if labels is None else labels},
        "spec": {"nodeName": node, "hostNetwork": True,
                 "containers": [{"name": "agent", "ports": ports if ports is not None else []}]},
        "status": {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_agent_endpoint_uses_the_named_port() -> None:
    body = agent_pod("mace-agent-x", "node-a", ports=[{"name": "metrics", "containerPort": 1},
                                                      {"name": "http", "containerPort": 9999}])
    assert agent_endpoint(body) == AgentEndpoint("node-a", "mace-agent-x", "192.0.2.1", 9999)


def test_agent_endpoint_defaults_the_port_and_brackets_ipv6() -> None:
    endpoint = agent_endpoint(agent_pod("a", "node-a", ip="2001:db8::1"))
    assert endpoint is not None
    assert endpoint.port == DEFAULT_PORT
    assert endpoint.url == f"http://[2001:db8::1]:{DEFAULT_PORT}"


@pytest.mark.parametrize("body", [
    agent_pod("a", "node-a", ready=False),
    agent_pod("a", "node-a", phase="Pending"),
    agent_pod("a", "node-a", ip=""),
    agent_pod("a", "node-a", labels={"app.kubernetes.io/name": "mace-agent"}),
    agent_pod("a", "node-a", labels={}),
])
def test_not_an_available_agent(body: dict[str, Any]) -> None:
    assert agent_endpoint(body) is None


def test_select_agent_picks_a_ready_agent_of_the_node() -> None:
    pods = [agent_pod("z", "node-a"), agent_pod("b", "node-b"), agent_pod("a", "node-a", ready=False),
            agent_pod("c", "node-a", ip="192.0.2.9"), POD]
    chosen = select_agent(pods, "node-a")
    assert chosen is not None and (chosen.name, chosen.host) == ("c", "192.0.2.9")
    assert select_agent(pods, "node-c") is None
