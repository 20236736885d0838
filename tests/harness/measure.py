"""Figures of the operator + agent on the harness (not pass/fail): latency to Measuring and to the first
samples, CPU at rest, memory with many probes.

    tests/harness/cluster up
    .venv/bin/python tests/harness/measure.py [--rounds 5] [--probes 50] [--rest-seconds 30]

Prints one JSON object. It makes its own namespace, pods and probes, and removes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common import HARNESS_DIR, KUBECONFIG, load_state, recorded_procs
from kubernetes import client, config, watch

GROUP, VERSION, PLURAL = "mace.dev", "v1alpha1", "latencyprobes"
ICMP = {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]}
CLUSTER = Path(__file__).resolve().parent / "cluster"
TICKS = 100


def harness(*args: str) -> str:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, check=True).stdout


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def agent_pid() -> int:
    record = json.loads((HARNESS_DIR / "pods" / "mace-system_mace-agent-harness.json").read_text())
    return int(record["pid"])


class Lab:
    def __init__(self) -> None:
        api = config.new_client_from_config(str(KUBECONFIG))  # type: ignore[no-untyped-call]
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.ns = f"mace-measure-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        self.pods: list[str] = []
        self.remote = load_state()["node"]["remote_ipv4"]

    def pod(self, name: str, *cmd: str) -> None:
        harness("pod", name, "-n", self.ns, "--", *cmd)
        self.pods.append(name)

    def probe(self, name: str, pod: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LatencyProbe", "metadata": {"name": name},
                "spec": {"pod": pod, "in": ICMP, "out": ICMP}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def statuses(self) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
        return {i["metadata"]["name"]: i.get("status") or {} for i in items}

    def delete_probes(self) -> None:
        for name in self.statuses():
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        deadline = time.monotonic() + 60
        while self.statuses() and time.monotonic() < deadline:
            time.sleep(0.5)

    def close(self) -> None:
        self.delete_probes()
        for pod in self.pods:
            subprocess.run([str(CLUSTER), "pod", pod, "-n", self.ns, "--delete"], capture_output=True,
                           check=False)

    def time_to_results(self, name: str, pod: str, timeout: float = 60) -> tuple[float, float]:
        """Seconds from create to phase Measuring, and to the first samples in status.results."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        began = time.monotonic()
        self.probe(name, pod)
        measuring = samples = None
        events = stream.stream(  # type: ignore[no-untyped-call]
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL,
            field_selector=f"metadata.name={name}", timeout_seconds=int(timeout))
        for event in events:
            status = event["object"].get("status") or {}
            now = time.monotonic() - began
            if measuring is None and status.get("phase") == "Measuring":
                measuring = now
            if samples is None and ((status.get("results") or {}).get("matched") or 0) > 0:
                samples = now
            if measuring is not None and samples is not None:
                stream.stop()  # type: ignore[no-untyped-call]
        if measuring is None or samples is None:
            raise RuntimeError(f"probe {name} did not get samples within {timeout}s")
        return measuring, samples


def rest_cpu(seconds: float) -> dict[str, float]:
    """Percent of one CPU used by the agent and the operator over ``seconds``."""
    pids = {"agent": agent_pid(), "operator": recorded_procs(load_state())["operator"].pid}
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {k: round(100 * (cpu_ticks(p) - before[k]) / TICKS / seconds, 2) for k, p in pids.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--rest-seconds", type=float, default=30.0)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    out["cpu_percent_at_rest_no_probes"] = rest_cpu(args.rest_seconds)
    lab = Lab()
    try:
        lab.pod("pinger", "ping", "-n", "-i", "0.2", lab.remote)
        lab.pod("idle", "sleep", "infinity")
        times = [lab.time_to_results(f"latency-{i}", "pinger") for i in range(args.rounds)]
        lab.delete_probes()
        out["apply_to_measuring_s"] = {"median": round(statistics.median(t[0] for t in times), 2),
                                       "max": round(max(t[0] for t in times), 2)}
        out["apply_to_first_samples_s"] = {"median": round(statistics.median(t[1] for t in times), 2),
                                           "max": round(max(t[1] for t in times), 2)}
        for i in range(10):
            lab.probe(f"idle-{i}", "idle")
        deadline = time.monotonic() + 120
        while sum((s.get("results") or {}).get("state") == "Measuring" for s in lab.statuses().values()) < 10:
            if time.monotonic() > deadline:
                raise RuntimeError("idle probes did not reach Measuring")
            time.sleep(1)
        time.sleep(5)
        out["cpu_percent_at_rest_10_idle_probes"] = rest_cpu(args.rest_seconds)
        lab.delete_probes()
        pods = max(1, args.probes // 10)
        for p in range(pods):
            lab.pod(f"p{p}", "ping", "-n", "-i", "0.2", lab.remote)
        began = time.monotonic()
        for i in range(args.probes):
            lab.probe(f"many-{i}", f"p{i % pods}")
        deadline = time.monotonic() + 300
        while True:
            statuses = lab.statuses()
            done = sum(((s.get("results") or {}).get("matched") or 0) > 0 for s in statuses.values())
            if done == args.probes:
                break
            if time.monotonic() > deadline:
                errors = {n: (s.get("results") or {}).get("message") for n, s in statuses.items()
                          if (s.get("results") or {}).get("state") == "Error"}
                raise RuntimeError(f"only {done}/{args.probes} probes got samples; errors: {errors}")
            time.sleep(1)
        out["many_probes"] = {"probes": args.probes,
                              "seconds_until_all_have_samples": round(time.monotonic() - began, 1),
                              "agent_rss_mib": round(rss_mib(agent_pid()))}
        out["many_probes"]["cpu_percent_with_traffic"] = rest_cpu(args.rest_seconds)
    finally:
        lab.close()
    out["agent_rss_mib_after_deleting_them"] = round(rss_mib(agent_pid()))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
