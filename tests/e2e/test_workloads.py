"""UDP and TCP workloads measured in both directions, with the probes of examples/."""

from __future__ import annotations

from e2e_cluster import Cluster
from workloads import apply_example, metric_count, run_pod, wait_measuring


def test_udp_and_tcp_clients_are_measured_both_ways_with_the_example_probes(
        cluster: Cluster, namespace: str) -> None:
    udp = run_pod(cluster, namespace, "udp-client", "mace-lab", "udp-client", cluster.remote_addr,
                  "--port", str(cluster.udp_port), "--interval", "0.1")
    tcp = run_pod(cluster, namespace, "tcp-client", "mace-lab", "tcp-client", cluster.remote_addr,
                  "--port", str(cluster.tcp_port), "--interval", "0.1")
    probes = {apply_example(cluster, namespace, "udp-latencyprobe.yaml"): udp,
              apply_example(cluster, namespace, "tcp-latencyprobe.yaml"): tcp}
    for name, pod in probes.items():
        status = wait_measuring(cluster, namespace, name, more_than=5)
        assert status["node"] == pod["spec"]["nodeName"]
        for direction in ("egress", "ingress"):
            assert status["results"][direction]["count"] > 0, (name, direction, status["results"])
        metrics = cluster.agent_get(pod["spec"]["nodeName"], "/metrics")
        for direction in ("egress", "ingress"):
            assert metric_count(metrics, namespace, name, direction) > 0, (name, direction)
