"""Fifty probes on one node: all measure, and the agent's memory stays bounded (no growth per probe cycle)."""

from __future__ import annotations

import time

import pytest
from harness_client import Cluster, wait_for

pytestmark = pytest.mark.cluster

PODS = 5
PROBES_PER_POD = 10
RSS_LIMIT = 2 << 30
"""Far above what 50 probes take here (~340 MiB, mostly bcc's clang/LLVM): a ceiling, not a target."""
CYCLE_GROWTH = 1.25
"""A second round of the same 50 probes may use at most this much more memory than the first."""


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _round(cluster: Cluster, namespace: str) -> int:
    """Create 50 probes, wait until every one has samples; return the agent's RSS then; delete them."""
    names = [(f"p{p}", f"lp-{p}-{i}") for p in range(PODS) for i in range(PROBES_PER_POD)]
    for pod, name in names:
        cluster.create_probe(namespace, name, pod)

    deadline = time.monotonic() + 240
    while True:
        results = {name: cluster.status(namespace, name).get("results") or {} for _, name in names}
        if all((r.get("matched") or 0) > 0 for r in results.values()):
            break
        failed = {n: r.get("message") for n, r in results.items() if r.get("state") == "Error"}
        assert not failed, f"{len(failed)} of {len(names)} probes failed on the agent: {failed}"
        if time.monotonic() > deadline:
            waiting = {n: f"{r.get('state')}: {r.get('message')}" for n, r in results.items()
                       if not r.get("matched")}
            raise AssertionError(f"{len(waiting)} of {len(names)} probes have no samples: {waiting}")
        time.sleep(1)
    rss = _rss(cluster.agent_pid())
    for _, name in names:
        cluster.delete_probe(namespace, name, wait=False)
    wait_for("the probes to be gone",
             lambda: not cluster.custom.list_namespaced_custom_object("mace.dev", "v1alpha1", namespace,
                                                                       "latencyprobes")["items"], 60)
    return rss


def test_fifty_probes_memory_is_bounded(cluster: Cluster, namespace: str) -> None:
    for p in range(PODS):
        cluster.ping_pod(namespace, f"p{p}", interval="0.2")
    first = _round(cluster, namespace)
    second = _round(cluster, namespace)
    print(f"agent RSS with {PODS * PROBES_PER_POD} probes: {first / 2**20:.0f} MiB, "
          f"second round {second / 2**20:.0f} MiB")
    assert first < RSS_LIMIT
    assert second < first * CYCLE_GROWTH
