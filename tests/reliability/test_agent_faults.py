"""Agent faults as a user sees them in ``kubectl get lp`` (issue 12, defects 2 and 7): a frozen agent's
probe leaves Measuring with a condition that names the agent, and comes back when it thaws; a restarted
agent's counts start again from zero and ``results.since`` (the SINCE column) says so."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from typing import Any

import pytest
from harness_client import Cluster, harness

pytestmark = pytest.mark.cluster

HEARTBEAT_S = 10
"""Twice the harness agent's publish interval (5 s, the default)."""
NOT_REPORTING_S = 3 * HEARTBEAT_S
"""The operator's bound: three heartbeats without a write."""


def measuring_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c.get("type") == "Measuring"), {})


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_frozen_agent_is_reported_and_its_return_too(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger", interval="0.2")
    cluster.create_probe(namespace, "icmp", "pinger")
    status = cluster.wait_samples(namespace, "icmp", at_least=2, timeout=90)
    assert status["results"]["heartbeatSeconds"] == HEARTBEAT_S
    pid = cluster.agent_pid()
    os.kill(pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        stale = cluster.wait_status(
            namespace, "icmp", lambda s: measuring_condition(s).get("reason") == "AgentNotReporting",
            timeout=NOT_REPORTING_S + 20)
        noticed = time.monotonic() - frozen
    finally:
        os.kill(pid, signal.SIGCONT)
    thawed = time.monotonic()
    condition = measuring_condition(stale)
    assert stale["phase"] == "Pending" and condition["status"] == "False"
    assert cluster.node in condition["message"] and "not reported" in condition["message"]
    assert stale["filter"] == status["filter"], "what was measured stays in the status"
    assert noticed >= NOT_REPORTING_S - HEARTBEAT_S - 2, "not before the agent missed its heartbeats"
    columns = cluster.kubectl("get", "latencyprobes", "-n", namespace, "icmp", "--no-headers").split()
    assert columns[3] == "Pending"

    def live_again(now: dict[str, Any]) -> bool:
        results = now.get("results") or {}
        return now.get("phase") == "Measuring" and results.get("state") == "Measuring" \
            and moment(results.get("updated") or status["results"]["updated"]) > moment(stale_updated) \
            and (results.get("matched") or 0) > 0

    stale_updated = (stale.get("results") or {}).get("updated") or status["results"]["updated"]
    back = cluster.wait_status(namespace, "icmp", live_again, timeout=60)
    returned = time.monotonic() - thawed
    assert measuring_condition(back)["reason"] == "Measuring"
    print(f"frozen agent: AgentNotReporting after {noticed:.1f} s (bound {NOT_REPORTING_S} s); "
          f"Measuring with samples {returned:.1f} s after SIGCONT")


def test_an_agent_restart_says_the_counts_began_again(cluster: Cluster, namespace: str) -> None:
    cluster.ping_pod(namespace, "pinger", interval="0.1")
    cluster.create_probe(namespace, "icmp", "pinger")
    before = cluster.wait_samples(namespace, "icmp", at_least=20, timeout=90)["results"]
    assert before["since"] and moment(before["since"]) <= moment(before["updated"])
    old_pid = cluster.agent_pid()
    harness("restart", "agent", timeout=180)
    assert cluster.agent_pid() != old_pid

    def restarted(status: dict[str, Any]) -> bool:
        results = status.get("results") or {}
        return bool(results.get("since")) and moment(results["since"]) > moment(before["since"]) \
            and (results.get("matched") or 0) > 0
    after = cluster.wait_status(namespace, "icmp", restarted, timeout=90)["results"]
    print(f"agent restart: SAMPLES {before['matched']} since {before['since']} -> {after['matched']} "
          f"since {after['since']}")
    columns = cluster.kubectl("get", "latencyprobes", "-n", namespace, "icmp").splitlines()
    header, row = columns[0].split(), columns[1].split()
    assert "SINCE" in header
    assert row[header.index("SINCE") - 2].endswith(("s", "m")), "SINCE shows the age of the counts"


def test_an_idle_probe_keeps_reporting(cluster: Cluster, namespace: str) -> None:
    """No traffic, no change: the agent's heartbeat still moves ``results.updated``, so a quiet probe is
    never mistaken for a silent agent."""
    cluster.pod(namespace, "sleeper", "sleep", "3600")
    cluster.create_probe(namespace, "idle", "sleeper")
    first = cluster.wait_status(namespace, "idle",
                                lambda s: (s.get("results") or {}).get("state") == "Measuring", 90)["results"]
    def rewritten(status: dict[str, Any]) -> bool:
        updated = (status.get("results") or {}).get("updated")
        return bool(updated) and moment(updated) > moment(first["updated"])

    later = cluster.wait_status(namespace, "idle", rewritten, timeout=HEARTBEAT_S + 5)
    assert later["phase"] == "Measuring" and later["results"]["matched"] == first["matched"] == 0
    waited = (moment(later["results"]["updated"]) - moment(first["updated"])).total_seconds()
    print(f"idle probe: results rewritten after {waited:.0f} s with nothing new (heartbeat {HEARTBEAT_S} s)")
