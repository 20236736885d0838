"""Beyond its agent's limit a probe waits in Pending with a condition naming the limit, never in
Measuring, and measures once another probe leaves room."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness_client import Cluster, harness

pytestmark = pytest.mark.cluster

LIMIT = 3


@pytest.fixture
def small_agent(cluster: Cluster) -> Iterator[None]:
    """The harness agent restarted with ``--max-probes LIMIT``; restarted as it was afterwards."""
    os.environ["MACE_HARNESS_AGENT_ARGS"] = f"--max-probes {LIMIT}"
    try:
        harness("restart", "agent", timeout=180)
        yield
    finally:
        del os.environ["MACE_HARNESS_AGENT_ARGS"]
        harness("restart", "agent", timeout=180)


def _capacity_condition(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    conditions = cluster.status(namespace, name).get("conditions") or []
    return next((c for c in conditions
                 if c.get("reason") == "AgentAtCapacity" and c.get("status") == "False"), {})


def test_a_probe_beyond_the_limit_says_so_and_starts_when_room_is_made(
        cluster: Cluster, namespace: str, small_agent: None) -> None:
    for i in range(LIMIT + 1):
        cluster.ping_pod(namespace, f"p{i}", interval="0.2")
    for i in range(LIMIT):
        cluster.create_probe(namespace, f"lp{i}", f"p{i}")
    for i in range(LIMIT):
        cluster.wait_samples(namespace, f"lp{i}", timeout=60)
    cluster.create_probe(namespace, "extra", f"p{LIMIT}")
    waiting = cluster.wait_status(namespace, "extra",
                                  lambda s: bool(_capacity_condition(cluster, namespace, "extra")),
                                  timeout=60)
    assert waiting["phase"] == "Pending"
    assert f"limit of {LIMIT} probes" in _capacity_condition(cluster, namespace, "extra")["message"]
    for i in range(LIMIT):  # the others are untouched
        assert cluster.status(namespace, f"lp{i}")["phase"] == "Measuring"

    cluster.delete_probe(namespace, "lp0")
    cluster.wait_samples(namespace, "extra", timeout=60)
    measuring = sum(cluster.status(namespace, n).get("phase") == "Measuring" for n in ("lp1", "lp2", "extra"))
    assert measuring == LIMIT
