"""Workload pods and probes of the e2e tests, made the way a user makes them (kubectl run, kubectl apply)."""

from __future__ import annotations

import json
import re
from typing import Any

from e2e_cluster import REPO, Cluster, is_ready, wait_for

EXAMPLES = REPO / "examples"
MEASURE_TIMEOUT_S = 120.0


def run_pod(cluster: Cluster, namespace: str, name: str, *command: str,
            restart: str = "Never") -> dict[str, Any]:
    """``kubectl run NAME`` of the lab image with ``command``; return the pod once it is Ready."""
    cluster.kubectl("run", name, "-n", namespace, f"--image={cluster.lab_image}", "--image-pull-policy=Never",
                    f"--restart={restart}", "--", *command)
    return wait_for(f"pod {namespace}/{name} Ready", lambda: ready_pod(cluster, namespace, name), 120)


def ready_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        return None
    pod: dict[str, Any] = json.loads(done.stdout)
    return pod if is_ready(pod) else None


def apply_example(cluster: Cluster, namespace: str, example: str, **replace: str) -> str:
    """``kubectl apply -f examples/EXAMPLE`` in ``namespace`` (text substitutions first, if any); the
    probe's name."""
    text = (EXAMPLES / example).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=text)
    match = re.search(r"^metadata:\n\s+name:\s*(\S+)", text, re.MULTILINE)
    assert match, f"no metadata.name in {example}"
    return match.group(1)


def probe(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get_json("latencyprobe", name, "-n", namespace)
    return result


def matched(status: dict[str, Any]) -> int:
    return int((status.get("results") or {}).get("matched") or 0)


def wait_measuring(cluster: Cluster, namespace: str, name: str, more_than: int = 0,
                   timeout: float = MEASURE_TIMEOUT_S) -> dict[str, Any]:
    """The probe's status once it is Measuring with more than ``more_than`` matched packets."""
    def check() -> dict[str, Any] | None:
        status = probe(cluster, namespace, name).get("status") or {}
        return status if status.get("phase") == "Measuring" and matched(status) > more_than else None

    try:
        return wait_for(f"probe {namespace}/{name} Measuring with samples", check, timeout)
    except AssertionError as error:
        last = probe(cluster, namespace, name).get("status")
        raise AssertionError(f"{error}; last status: {last}") from None


def condition_reasons(status: dict[str, Any]) -> set[str]:
    return {c.get("reason", "") for c in status.get("conditions") or []}


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = probe(cluster, namespace, name).get("status") or {}
    return status


def metric_count(metrics: str, namespace: str, probe_name: str, direction: str) -> float:
    """The ``mace_probe_latency_seconds_count`` of one probe and direction (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith("mace_probe_latency_seconds_count{") and f'probe="{probe_name}"' in line \
                and f'namespace="{namespace}"' in line and f'direction="{direction}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
