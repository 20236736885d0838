"""Probes as the agent runs them: isolation between pods, detaching on delete, resuming after a restart."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime

import pytest
from harness_client import Cluster, harness, wait_for

pytestmark = pytest.mark.cluster


def _kernel_has(program: int) -> bool:
    done = subprocess.run(["bpftool", "prog", "show", "id", str(program)], capture_output=True, check=False)
    return done.returncode == 0


def test_two_probes_on_two_pods_see_only_their_own_packets(cluster: Cluster, namespace: str) -> None:
    fast = cluster.ping_pod(namespace, "fast", interval="0.05")
    slow = cluster.ping_pod(namespace, "slow", interval="0.3")
    cluster.create_probe(namespace, "on-fast", "fast")
    cluster.create_probe(namespace, "on-slow", "slow")
    cluster.wait_samples(namespace, "on-fast", at_least=10)
    cluster.wait_samples(namespace, "on-slow", at_least=4)
    for probe, pod in (("on-fast", fast), ("on-slow", slow)):
        code, text = cluster.get(f"/events?probe={namespace}/{probe}&limit=8&timeout=20", timeout=30)
        assert code == 200
        events = [json.loads(line) for line in text.splitlines()]
        assert len(events) == 8
        assert {e["proc_id"] for e in events} == {pod.pid}, f"{probe} saw another pod's packets"
        assert {e["probe"] for e in events} == {f"{namespace}/{probe}"}
    # Both run at once on the same outer device; each one's counts follow its own pod's rate.
    fast_status, slow_status = cluster.status(namespace, "on-fast"), cluster.status(namespace, "on-slow")
    assert fast_status["results"]["matched"] > slow_status["results"]["matched"]


def test_deleting_a_probe_removes_its_entries_and_nothing_else(cluster: Cluster, namespace: str) -> None:
    """The node's one program set stays attached as probes come and go; a probe is map entries."""
    cluster.ping_pod(namespace, "pinger")
    programs = cluster.agent_programs()
    assert programs, "the agent attached no eBPF programs at start"
    targets = cluster.agent_map_entries("targets")
    cluster.create_probe(namespace, "short-lived", "pinger")
    cluster.wait_samples(namespace, "short-lived")
    assert cluster.agent_programs() == programs, "adding a probe loaded or unloaded programs"
    assert cluster.agent_map_entries("targets") == targets + 1  # the pod's container cgroup
    cluster.delete_probe(namespace, "short-lived")
    wait_for("the probe's target entry to be removed",
             lambda: cluster.agent_map_entries("targets") == targets, 15)
    assert cluster.agent_programs() == programs
    assert all(_kernel_has(p) for p in programs)


def test_agent_restart_resumes_probes(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "survivor", "pinger")
    cluster.wait_samples(namespace, "survivor")
    old_pid = cluster.agent_pid()
    old_programs = cluster.agent_programs()
    restarted_at = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1)  # `updated` has one-second resolution: make "written after the restart" unambiguous
    restarted = json.loads(harness("restart", "agent", timeout=180).stdout)
    assert restarted["pid"] != old_pid

    def resumed() -> bool:
        results = cluster.status(namespace, "survivor").get("results") or {}
        updated = datetime.fromisoformat(results.get("updated", "1970-01-01T00:00:00Z"))
        return results.get("state") == "Measuring" and (results.get("matched") or 0) > 0 \
            and updated > restarted_at

    wait_for("the restarted agent to measure the probe again", resumed, 60)
    assert not any(_kernel_has(p) for p in old_programs), "the old agent's programs outlived it"
