"""Two hundred probes on one node's engine: each measures its own pod, and probes that come and go
take nothing from a probe that keeps measuring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from harness_client import Cluster, wait_for

pytestmark = pytest.mark.cluster

PODS = 20
PROBES_PER_POD = 10
PINGS = 60
CHURN = 20


def _all_sampled(cluster: Cluster, namespace: str, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        results = {name: cluster.status(namespace, name).get("results") or {} for name in names}
        failed = {n: r.get("message") for n, r in results.items() if r.get("state") == "Error"}
        assert not failed, f"{len(failed)} of {len(names)} probes failed on the agent: {failed}"
        waiting = [n for n, r in results.items() if not r.get("matched")]
        if not waiting:
            return
        assert time.monotonic() < deadline, f"{len(waiting)} of {len(names)} probes have no samples"
        time.sleep(1)


def test_two_hundred_probes_measure_their_own_pods_while_others_come_and_go(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    pods = {f"p{i}": cluster.ping_pod(namespace, f"p{i}", interval="0.2") for i in range(PODS)}
    names = {pod: [f"lp-{pod}-{j}" for j in range(PROBES_PER_POD)] for pod in pods}
    began = time.monotonic()
    for pod, probes in names.items():
        for name in probes:
            cluster.create_probe(namespace, name, pod)
    everyone = [n for probes in names.values() for n in probes]
    _all_sampled(cluster, namespace, everyone, timeout=300)
    print(f"{len(everyone)} probes with samples {time.monotonic() - began:.1f} s after the first create")
    for pod, probes in names.items():  # one stream per pod: only that pod's process
        code, text = cluster.get(f"/events?probe={namespace}/{probes[-1]}&limit=4&timeout=20", timeout=30)
        assert code == 200
        assert {json.loads(line)["proc_id"] for line in text.splitlines()} == {pods[pod].pid}

    # A shell that pings PINGS times once told to: its probe must see every one of them, both ways,
    # while other probes are added and removed.
    go = tmp_path / "go"
    cluster.pod(namespace, "steady", "sh", "-c",
                f"while [ ! -e {go} ]; do sleep 0.05; done; ping -n -c {PINGS} -i 0.1 {cluster.remote}")
    cluster.create_probe(namespace, "steady", "steady")
    cluster.wait_status(namespace, "steady", lambda s: (s.get("results") or {}).get("state") == "Measuring")
    go.write_text("")
    for i in range(CHURN):
        cluster.create_probe(namespace, f"churn-{i}", f"p{i % PODS}", **{"in": CHURN_SPEC, "out": CHURN_SPEC})
        cluster.delete_probe(namespace, names[f"p{i % PODS}"][i // PODS], wait=False)

    def all_seen() -> bool:
        results = cluster.status(namespace, "steady").get("results") or {}
        return ((results.get("egress") or {}).get("count"), (results.get("ingress") or {}).get("count")) \
            == (PINGS, PINGS)

    wait_for(f"the steady probe to count all {PINGS} pings each way", all_seen, 60)


CHURN_SPEC = {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq", "ip_dst_addr"]}
"""Churning probes use another flow spec than the steady one: a second layout on the device."""
