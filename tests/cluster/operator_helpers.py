"""Helpers of the operator's cluster suites: conditions, bare Pod objects, server-side dry runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from harness_client import ICMP, Cluster
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
AGENT_LABELS = {"app.kubernetes.io/name": "mace-agent", "app.kubernetes.io/component": "agent"}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition of type ``kind`` in a status (empty if absent)."""
    for item in status.get("conditions") or ():
        if item.get("type") == kind:
            return dict(item)
    return {}


def wait_reason(cluster: Cluster, namespace: str, name: str, reason: str,
                timeout: float = 10) -> dict[str, Any]:
    """The probe's status once its ``Resolved`` condition has ``reason``."""
    return cluster.wait_status(namespace, name, lambda s: condition(s, "Resolved").get("reason") == reason,
                               timeout)


def dry_run_refusal(cluster: Cluster, namespace: str, inbound: dict[str, Any]) -> str | None:
    """The API server's message if it refuses a probe with this ingress flow spec (dry run), else None."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LatencyProbe", "metadata": {"name": "dry-run"},
            "spec": {"pod": "some-pod", "in": inbound, "out": ICMP}}
    try:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    except ApiException as error:
        assert error.status == 422, error.body
        return str(error.body)
    return None


class BarePods:
    """Pod objects with no process behind them (as the API shows a pod before or without a kubelet)."""

    def __init__(self, cluster: Cluster) -> None:
        self.core = cluster.core
        self.made: list[tuple[str, str]] = []

    def create(self, namespace: str, name: str, node: str, labels: dict[str, str] | None = None,
               ports: list[dict[str, Any]] | None = None) -> None:
        container: dict[str, Any] = {"name": "main", "image": "mace.invalid/none"}
        if ports:
            container["ports"] = ports
        self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [container], "automountServiceAccountToken": False}})
        self.made.append((namespace, name))

    def running(self, namespace: str, name: str, ip: str) -> None:
        """Write the status a kubelet writes once the pod's container runs (and is Ready)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{
                "name": "main", "image": "mace.invalid/none", "imageID": "", "ready": True,
                "restartCount": 0,
                "containerID": f"containerd://{uuid.uuid4().hex * 2}",
                "state": {"running": {"startedAt": now}}}]}
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status}, _content_type=MERGE_PATCH)

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise

    def delete_all(self) -> None:
        for namespace, name in self.made:
            self.delete(namespace, name)
