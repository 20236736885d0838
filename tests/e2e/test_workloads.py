"""Workloads as users run them: UDP and TCP clients measured both ways with the probes of examples/, and
a pod of two containers measured whole or one container (spec.container)."""

from __future__ import annotations

import json

from e2e_cluster import Cluster, wait_for
from workloads import apply_example, metric_count, ready_pod, run_pod, wait_measuring


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


def _icmp_ids(cluster: Cluster, node: str, namespace: str, probe_name: str, events: int) -> set[int]:
    """The ICMP ids of ``events`` events of the probe (both directions)."""
    lines = cluster.agent_get(node, f"/events?probe={namespace}/{probe_name}", lines=events, timeout=20)
    found = [json.loads(line) for line in lines.splitlines()]
    assert len(found) == events, found
    return {int(e["info"]["icmp_id"]) for e in found}


def test_a_probe_measures_every_container_of_its_pod_or_only_spec_container(
        cluster: Cluster, namespace: str) -> None:
    """Two containers ping with their own ICMP ids; two probes with the same fields at once: without
    spec.container one reports both containers, with it the other reports only that container's."""
    ids = {"first": 0x1101, "second": 0x2202}
    containers = [{"name": name, "image": cluster.lab_image, "imagePullPolicy": "Never",
                   "command": ["ping", "-i", "0.2", "-e", str(ident), cluster.remote_addr]}
                  for name, ident in ids.items()]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "duo"},
           "spec": {"containers": containers, "restartPolicy": "Never"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(pod))
    node = wait_for("pod duo Ready", lambda: ready_pod(cluster, namespace, "duo"), 120)["spec"]["nodeName"]
    flow = {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_id", "icmp_seq"]}
    for name, extra in (("duo-all", {}), ("duo-second", {"container": "second"})):
        probe = {"apiVersion": "mace.dev/v1alpha1", "kind": "LatencyProbe", "metadata": {"name": name},
                 "spec": {"pod": "duo", "in": flow, "out": flow, **extra}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(probe))

    # ping -e sets the id field as given; the field catalogue reads it in network order.
    either = {name: {ident, int.from_bytes(ident.to_bytes(2, "big"), "little")}
              for name, ident in ids.items()}
    whole = wait_measuring(cluster, namespace, "duo-all", more_than=10)
    one = wait_measuring(cluster, namespace, "duo-second", more_than=10)
    assert whole["results"]["scope"] == "cgroup" and whole["results"]["targets"] == 2, whole["results"]
    assert one["results"]["targets"] == 1, one["results"]
    seen = _icmp_ids(cluster, node, namespace, "duo-all", 40)
    assert len(seen) == 2 and all(seen & both for both in either.values()), (seen, either)
    seen = _icmp_ids(cluster, node, namespace, "duo-second", 40)
    assert len(seen) == 1 and seen <= either["second"], (seen, either)
