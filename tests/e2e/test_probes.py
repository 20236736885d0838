"""What a user does first on a cluster: a pinging pod, the example probe, its status, metrics and events."""

from __future__ import annotations

import json

from e2e_cluster import Cluster
from workloads import apply_example, metric_count, run_pod, wait_measuring


def test_the_example_probe_on_a_pinging_pod_measures_in_status_metrics_and_events(
        cluster: Cluster, namespace: str) -> None:
    pod = run_pod(cluster, namespace, "pinger", "ping", "-i", "0.2", cluster.remote_addr)
    name = apply_example(cluster, namespace, "latencyprobe.yaml")
    status = wait_measuring(cluster, namespace, name)
    assert status["node"] == pod["spec"]["nodeName"]
    table = cluster.kubectl("get", "lp", "-n", namespace).stdout
    assert "Measuring" in table.splitlines()[1] and name in table, table
    latency = status["results"]["egress"]["p50"], status["results"]["ingress"]["p50"]
    assert all(value for value in latency), status["results"]

    node = pod["spec"]["nodeName"]
    metrics = cluster.agent_get(node, "/metrics")
    for direction in ("egress", "ingress"):
        assert metric_count(metrics, namespace, name, direction) > 0, (direction, metrics[-2000:])
    events = [json.loads(line) for line in
              cluster.agent_get(node, f"/events?probe={namespace}/{name}", lines=4, timeout=15).splitlines()]
    assert len(events) == 4, events
    assert {e["probe"] for e in events} == {f"{namespace}/{name}"}
    assert {e["direction"] for e in events} <= {"in", "out"}
    assert all(e["latency_ns"] > 0 and "icmp_seq" in e["info"] for e in events), events
