"""The operator's /metrics against the real API server: mace_probe_phase shows every probe's phase as its
status says, also for probes no agent runs (a pod that does not exist, one that does not run), the same
after an operator restart, follows a probe to Measuring, and drops a deleted probe."""

from __future__ import annotations

import pytest
from harness_client import Cluster, harness, wait_for
from operator_helpers import BarePods
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.cluster
PHASES = ("Pending", "Measuring", "Failed", "Completed")


def phases(cluster: Cluster, namespace: str) -> dict[str, dict[str, float]]:
    """probe -> phase -> value of the namespace's mace_probe_phase series on the operator's page."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(cluster.operator_metrics()):
        for sample in family.samples if family.name == "mace_probe_phase" else ():
            if sample.labels["namespace"] == namespace:
                found.setdefault(sample.labels["probe"], {})[sample.labels["phase"]] = sample.value
    return found


def one_hot(phase: str) -> dict[str, float]:
    return {p: float(p == phase) for p in PHASES}


def wait_phases(cluster: Cluster, namespace: str, want: dict[str, str]) -> None:
    """Wait until the namespace's series are exactly ``want`` (probe -> its one phase)."""
    expected = {probe: one_hot(phase) for probe, phase in want.items()}
    wait_for(f"mace_probe_phase of {namespace} to be {want}",
             lambda: phases(cluster, namespace) == expected, 30, 0.2)


def test_phase_of_probes_no_agent_runs_then_measuring_then_gone(cluster: Cluster, namespace: str,
                                                                pods: BarePods) -> None:
    cluster.create_probe(namespace, "early", "pinger")  # its pod does not exist yet
    pods.create(namespace, "sleepy", cluster.node)  # a Pod object whose container never starts
    cluster.create_probe(namespace, "waits", "sleepy")
    wait_phases(cluster, namespace, {"early": "Failed", "waits": "Pending"})
    # A probe the operator has not written a phase for yet counts as Pending too: wait for the status.
    wait_for("the probes' status phases", lambda: (cluster.status(namespace, "early").get("phase"),
                                                   cluster.status(namespace, "waits").get("phase"))
             == ("Failed", "Pending"), 30, 0.2)
    assert phases(cluster, namespace) == {"early": one_hot("Failed"), "waits": one_hot("Pending")}
    assert "process_resident_memory_bytes" in cluster.operator_metrics()
    # A new operator process lists the probes again: the same series, at the same address.
    harness("restart", "operator")
    wait_phases(cluster, namespace, {"early": "Failed", "waits": "Pending"})

    cluster.ping_pod(namespace, "pinger")  # the pod appears: the probe is measured
    wait_phases(cluster, namespace, {"early": "Measuring", "waits": "Pending"})
    assert cluster.status(namespace, "early")["phase"] == "Measuring"

    cluster.delete_probe(namespace, "waits")
    wait_phases(cluster, namespace, {"early": "Measuring"})
    cluster.delete_probe(namespace, "early")
    wait_phases(cluster, namespace, {})
