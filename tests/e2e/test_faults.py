"""What goes wrong in a cluster: the agent pod deleted, the operator restarted, the workload's container
restarted, the pod deleted, the probe deleted, the chart uninstalled."""

from __future__ import annotations

import time
from typing import Any

from agent_programs import held_programs, loaded_programs
from e2e_cluster import (
    AGENT_SELECTOR,
    OPERATOR_SELECTOR,
    SYSTEM_NAMESPACE,
    Cluster,
    agent_pod,
    chart_ready,
    is_ready,
    pods,
    wait_for,
)
from workloads import apply_example, condition_reasons, matched, run_pod, status_of, wait_measuring


def measured_pinger(cluster: Cluster, namespace: str, restart: str = "Never") -> tuple[str, dict[str, Any]]:
    """A pinging pod and the example probe on it, Measuring with samples: (probe name, status)."""
    run_pod(cluster, namespace, "pinger", "ping", "-i", "0.2", cluster.remote_addr, restart=restart)
    name = apply_example(cluster, namespace, "latencyprobe.yaml")
    return name, wait_measuring(cluster, namespace, name)


def test_a_deleted_agent_pod_is_replaced_and_measuring_resumes_without_its_programs(
        cluster: Cluster, namespace: str) -> None:
    name, status = measured_pinger(cluster, namespace)
    node = str(status["node"])
    old = agent_pod(cluster, node)
    old_programs = held_programs(cluster, node)
    assert old_programs, "the agent holds no eBPF program while it measures"
    began = time.monotonic()
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")

    def resumed() -> dict[str, Any] | None:
        now = status_of(cluster, namespace, name)
        fresh = (now.get("results") or {}).get("since") != status["results"]["since"]
        return now if fresh and now.get("phase") == "Measuring" and matched(now) > 0 else None

    wait_for("measuring to resume on the new agent", resumed, 180)
    print(f"\nmeasuring resumed {time.monotonic() - began:.1f}s after the agent pod was deleted")
    assert agent_pod(cluster, node)["metadata"]["uid"] != old["metadata"]["uid"]
    if loaded_programs(cluster) is not None:
        wait_for("the old agent's programs unloaded",
                 lambda: not old_programs & (loaded_programs(cluster) or set()), 60)


def test_a_restarted_operator_takes_over_without_restarting_the_measurement(
        cluster: Cluster, namespace: str) -> None:
    name, status = measured_pinger(cluster, namespace)
    old = {p["metadata"]["uid"] for p in pods(cluster, SYSTEM_NAMESPACE, OPERATOR_SELECTOR)}
    deployment = cluster.kubectl("-n", SYSTEM_NAMESPACE, "get", "deployment", "-l", OPERATOR_SELECTOR,
                                 "-o", "name").stdout.strip()
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "rollout", "restart", deployment)
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "rollout", "status", deployment, "--timeout=120s", timeout=130)
    def replaced() -> bool:
        now = pods(cluster, SYSTEM_NAMESPACE, OPERATOR_SELECTOR)
        return len(now) == 1 and now[0]["metadata"]["uid"] not in old and is_ready(now[0])

    wait_for("one new operator pod, Ready", replaced, 120)
    before = matched(status)
    after = wait_measuring(cluster, namespace, name, more_than=before + 5)
    for key in ("filter", "containerID", "startedAt"):
        assert after[key] == status[key], key
    assert after["results"]["since"] == status["results"]["since"]  # the agent's run was not started again


def test_a_restarted_workload_container_is_resolved_again_and_measured(
        cluster: Cluster, namespace: str) -> None:
    name, status = measured_pinger(cluster, namespace, restart="Always")
    pid = status["procIds"][0]
    killed = cluster.node_run("kill", "-KILL", str(pid))
    assert killed.returncode == 0, killed.stderr

    def resolved_again() -> dict[str, Any] | None:
        now = status_of(cluster, namespace, name)
        new = now.get("containerID") not in (None, status["containerID"])
        return now if new and now.get("phase") == "Measuring" and matched(now) > 0 else None

    now = wait_for("the new container measured", resolved_again, 120)
    assert now["procIds"] != status["procIds"]


def test_a_deleted_pod_turns_the_probe_to_pod_not_found(cluster: Cluster, namespace: str) -> None:
    name, _ = measured_pinger(cluster, namespace)
    cluster.kubectl("delete", "pod", "pinger", "-n", namespace, "--grace-period=1", "--wait", timeout=90)
    wait_for("PodNotFound",
             lambda: "PodNotFound" in condition_reasons(status_of(cluster, namespace, name)), 60)


def test_a_deleted_probe_releases_its_programs_and_entries(cluster: Cluster, namespace: str) -> None:
    node = run_pod(cluster, namespace, "pinger", "ping", "-i", "0.2", cluster.remote_addr)["spec"]["nodeName"]
    before = held_programs(cluster, node)
    name = apply_example(cluster, namespace, "latencyprobe.yaml")
    wait_measuring(cluster, namespace, name)
    probe_programs = held_programs(cluster, node) - before  # none where one program set serves every probe
    assert f'probe="{name}"' in cluster.agent_get(node, "/metrics")
    cluster.kubectl("delete", "latencyprobe", name, "-n", namespace, "--wait", "--timeout=60s", timeout=90)
    wait_for("the probe's programs released", lambda: not probe_programs & held_programs(cluster, node), 60)
    if probe_programs and (loaded := loaded_programs(cluster)) is not None:
        assert not probe_programs & loaded
    wait_for("the probe gone from /metrics", lambda: not [
        line for line in cluster.agent_get(node, "/metrics").splitlines()
        if f'probe="{name}"' in line and f'namespace="{namespace}"' in line], 30)


def test_helm_uninstall_leaves_nothing_behind(cluster: Cluster) -> None:
    agents = pods(cluster, SYSTEM_NAMESPACE, AGENT_SELECTOR)
    node = agents[0]["spec"]["nodeName"]
    programs = held_programs(cluster, node)
    try:
        cluster.helm("uninstall", "mace", "-n", SYSTEM_NAMESPACE, "--wait", "--timeout", "120s", timeout=180)
        wait_for("no pods in mace-system",
                 lambda: not cluster.get_json("pods", "-n", SYSTEM_NAMESPACE)["items"], 90)
        kinds = "crd,clusterrole,clusterrolebinding,daemonset,deployment,serviceaccount,service"
        left = cluster.kubectl("get", kinds, "-A", "-l", "app.kubernetes.io/instance=mace",
                               "-o", "name").stdout
        assert not left.strip(), left
        crd = cluster.kubectl("get", "crd", "latencyprobes.mace.dev", check=False)
        assert crd.returncode != 0, crd.stdout
        if (loaded := loaded_programs(cluster)) is not None:
            assert not programs & loaded
        mounts = cluster.node_run("cat", "/proc/self/mounts").stdout
        uids = {p["metadata"]["uid"] for p in agents}
        assert not [line for line in mounts.splitlines() if any(uid in line for uid in uids)]
    finally:
        cluster.install_chart()
        wait_for("the chart's pods Ready again", lambda: chart_ready(cluster), 180)
