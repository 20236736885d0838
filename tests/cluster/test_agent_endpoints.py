"""The agent's HTTP endpoint, on a probe of a pinging pod: status results, /metrics, /events, /resolve."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness_client import Cluster, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.cluster


def test_probe_results_metrics_and_events(cluster: Cluster, namespace: str) -> None:
    pod = cluster.ping_pod(namespace, "pinger")
    cluster.create_probe(namespace, "icmp", "pinger")
    status = cluster.wait_samples(namespace, "icmp", at_least=4)
    assert status["node"] == cluster.node
    assert f"proc-id: {pod.pid} " in status["filter"]
    results = status["results"]
    assert results["node"] == cluster.node
    for direction in ("egress", "ingress"):
        summary = results[direction]
        assert summary["count"] >= 1
        assert 0 < summary["p50Ns"] <= summary["p90Ns"] <= summary["p99Ns"] <= summary["maxNs"]
        assert summary["p50"].endswith(("ns", "us", "ms"))
    assert results["matched"] == results["egress"]["count"] + results["ingress"]["count"]

    columns = cluster.kubectl("get", "latencyprobes", "-n", namespace, "icmp", "--no-headers").split()
    assert columns[:3] == ["icmp", "pinger", cluster.node]
    assert columns[3] == "Measuring" and columns[4].endswith("s") and columns[5].endswith("s")
    assert int(columns[6]) >= 4

    code, text = cluster.get("/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    latency = families["mace_probe_latency_seconds"]
    assert latency.type == "histogram"
    for direction in ("egress", "ingress"):
        samples = [s for s in latency.samples if s.labels.get("probe") == "icmp"
                   and s.labels.get("namespace") == namespace and s.labels.get("direction") == direction]
        buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
        count = next(s.value for s in samples if s.name.endswith("_count"))
        total = next(s.value for s in samples if s.name.endswith("_sum"))
        assert count >= 1 and total > 0
        assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets must be cumulative"
        assert buckets[-1] == (math.inf, count)
        assert total / count < 0.1, "a ping's latency in the node is far below 100 ms"
    state = {s.labels["state"]: s.value for s in families["mace_probe_state"].samples
             if s.labels["probe"] == "icmp" and s.labels["namespace"] == namespace}
    assert state["Measuring"] == 1 and sum(state.values()) == 1
    assert families["mace_agent_api_connected"].samples[0].value == 1
    assert families["process_resident_memory_bytes"].samples[0].value > 0

    code, text = cluster.get(f"/events?probe={namespace}/icmp&limit=6&timeout=20", timeout=30)
    assert code == 200
    events = [json.loads(line) for line in text.splitlines()]
    assert len(events) == 6
    for event in events:
        assert event["probe"] == f"{namespace}/icmp"
        assert event["proc_id"] == pod.pid
        assert event["direction"] in ("out", "in")
        assert 0 < event["latency_ns"] < 100_000_000
        assert isinstance(event["info"]["icmp_seq"], int)
    assert {e["direction"] for e in events} == {"out", "in"}


def test_health_and_read_only_endpoints(cluster: Cluster) -> None:
    assert cluster.get("/healthz")[0] == 200
    code, body = cluster.get("/readyz")
    assert (code, json.loads(body)) == (200, {"ready": True})
    assert cluster.get("/nope")[0] == 404
    for path in ("/metrics", "/events", "/healthz"):
        assert cluster.post(path, {})[0] == 405
    request = urllib.request.Request(cluster.agent_url + "/metrics", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405
    assert cluster.get("/events?limit=x")[0] == 400


def test_resolve_needs_the_operators_token(cluster: Cluster, namespace: str) -> None:
    pod = cluster.ping_pod(namespace, "target")
    body = {"containerIDs": [pod.container_id], "podIP": pod.ip, "outerDevice": None}
    code, answer = cluster.post("/resolve", body)
    assert (code, answer["reason"]) == (401, "Unauthorized")
    agent_token = (Path(cluster.env["KUBECONFIG"]).parent / "mace-agent.token").read_text().strip()
    code, answer = cluster.post("/resolve", body, token=agent_token)
    assert (code, answer["reason"]) == (403, "Forbidden")
    assert cluster.post("/resolve", body, token="not-a-token")[0] == 401

    token = Path(cluster.env["MACE_OPERATOR_TOKEN_FILE"]).read_text().strip()
    code, answer = cluster.post("/resolve", body, token=token)
    assert code == 200, answer
    assert answer["procIds"] == [pod.pid] and answer["procId"] == pod.pid
    assert answer["vethName"] == pod.host_veth and answer["vethIfindex"] > 0
    assert answer["outerDevice"] == "uplink0" and answer["outerIfindex"] > 0

    code, answer = cluster.post("/resolve", {**body, "outerDevice": "nosuchdev0"}, token=token)
    assert (code, answer["reason"]) == (404, "DeviceNotFound")
    code, answer = cluster.post("/resolve", {**body, "podIP": "10.9.9.9"}, token=token)
    assert (code, answer["reason"]) == (404, "VethNotFound")
    unknown = {**body, "containerIDs": ["containerd://" + "ab" * 32]}
    code, answer = cluster.post("/resolve", unknown, token=token)
    assert (code, answer["reason"]) == (404, "ContainerNotFound")
    code, answer = cluster.post("/resolve", {"containerIDs": "x"}, token=token)
    assert (code, answer["reason"]) == (422, "BadRequest")

    cluster.delete_pod(namespace, "target")
    wait_for("the pod's process to be gone", lambda: not Path(f"/proc/{pod.pid}").exists(), 30)
    code, answer = cluster.post("/resolve", body, token=token)
    assert code == 404 and answer["reason"] in ("ContainerNotFound", "NoProcesses")
