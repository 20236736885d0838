"""What a probe needs from its Pod object: node, pod IP and the container IDs to resolve."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mace.probe import Reason


@dataclass(frozen=True)
class PodTarget:
    """A running pod, ready to be resolved by the agent on ``node``."""

    node: str
    pod_ip: str
    container_ids: tuple[str, ...]
    """Runtime IDs (``containerd://<hex>``) of the measured containers, in the pod spec's order."""


@dataclass(frozen=True)
class PodProblem:
    """Why a pod cannot be measured (now); ``final`` if waiting will not help."""

    reason: Reason
    message: str
    final: bool
    node: str | None = None


def _waiting_reason(status: Mapping[str, Any]) -> str:
    state = status.get("state") or {}
    for key in ("waiting", "terminated"):
        detail = state.get(key)
        if isinstance(detail, Mapping):
            return f"{key}: {detail.get('reason') or 'no reason given'}"
    return "not started"


def target(pod: Mapping[str, Any] | None, name: str, namespace: str,
           container: str | None) -> PodTarget | PodProblem:
    """The pod's node, IP and container IDs, or why it cannot be measured."""
    if pod is None:
        return PodProblem(Reason.PodNotFound, f"pod {namespace}/{name} does not exist", final=True)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node = spec.get("nodeName") or None
    names = [c.get("name") for c in spec.get("containers") or ()]
    if container is not None and container not in names:
        return PodProblem(Reason.ContainerNotFound,
                          f"pod {name} has no container {container} (it has: {', '.join(map(str, names))})",
                          final=True, node=node)
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodProblem(Reason.PodNotRunning, f"pod {name} is being deleted", final=False, node=node)
    phase = status.get("phase") or "Unknown"
    if phase in ("Succeeded", "Failed"):
        return PodProblem(Reason.PodNotRunning, f"pod {name} has terminated (phase {phase})",
                          final=True, node=node)
    if phase != "Running":
        return PodProblem(Reason.PodNotRunning, f"pod {name} is {phase}, not Running", final=False, node=node)
    if node is None:
        return PodProblem(Reason.PodNotRunning, f"pod {name} is not scheduled to a node", final=False)
    pod_ip = status.get("podIP")
    if not pod_ip:
        return PodProblem(Reason.PodNotRunning, f"pod {name} has no IP address yet", final=False, node=node)
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or ()}
    ids: list[str] = []
    for wanted in [container] if container is not None else names:
        current = statuses.get(wanted) or {}
        running = isinstance((current.get("state") or {}).get("running"), Mapping)
        if not running or not current.get("containerID"):
            return PodProblem(Reason.PodNotRunning,
                              f"container {wanted} of pod {name} is not running ({_waiting_reason(current)})",
                              final=False, node=node)
        ids.append(str(current["containerID"]))
    return PodTarget(node=node, pod_ip=str(pod_ip), container_ids=tuple(ids))
