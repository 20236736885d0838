"""Helpers of the kubectl-mace and dashboard suites: a measured probe, the plugin as a user runs it,
reading its plain-text frames back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness_client import REPO, Cluster, unique

from mace.probe import GROUP, PLURAL, VERSION

PLUGIN = str(Path(sys.executable).parent / "kubectl-mace")
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
AGENT_NAMESPACE = "mace-system"


@dataclass(frozen=True)
class Measured:
    """A pinging pod and a probe of it, Measuring with samples."""

    namespace: str
    pod: str
    probe: str


@contextmanager
def measured_probe(cluster: Cluster, prefix: str) -> Iterator[Measured]:
    """A namespace with a pod pinging the remote every 0.1 s and a probe measuring it; removed afterwards."""
    namespace = unique(prefix)
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    try:
        cluster.ping_pod(namespace, "pinger")
        cluster.create_probe(namespace, "pinger-icmp", "pinger")
        cluster.wait_samples(namespace, "pinger-icmp", at_least=10, timeout=60)
        yield Measured(namespace, "pinger", "pinger-icmp")
    finally:
        for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
            cluster.delete_probe(namespace, probe["metadata"]["name"])
        cluster.delete_pod(namespace, "pinger")


def plugin(cluster: Cluster, *args: str, kubeconfig: str | None = None,
           timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl-mace ARGS`` as a user would, with the harness's kubeconfig (or ``kubeconfig``)."""
    env = {**os.environ, "KUBECONFIG": kubeconfig or cluster.env["KUBECONFIG"], "COLUMNS": "160"}
    return subprocess.run([PLUGIN, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False, cwd=REPO)


def seconds(text: str) -> float | None:
    """``74.4us`` (or ``<131.1us``) as seconds; None for ``-``."""
    found = re.fullmatch(r"<?([0-9.]+)(ns|us|ms|s)", text)
    return float(found.group(1)) * UNITS[found.group(2)] if found else None


@dataclass(frozen=True)
class Row:
    """One line of a frame's latency table: ``direction over count p50 p90 p99 max``."""

    direction: str
    over: str
    count: int
    p50: float | None
    p99: float | None


def frames(output: str) -> list[list[str]]:
    """The plain-text frames of ``--frames N`` output, each as its lines."""
    found: list[list[str]] = []
    for line in output.splitlines():
        if re.search(r"─ frame \d+", line):
            found.append([])
        elif found:
            found[-1].append(line)
    return found


def latency_rows(frame: list[str]) -> dict[tuple[str, str], Row]:
    """A frame's latency rows by (direction, over): over is the interval (``1.0s``) or ``start``."""
    rows, direction = {}, ""
    for line in frame:
        words = line.split()
        if words[:1] in (["egress"], ["ingress"]) and len(words) == 7:
            direction, words = words[0], words[1:]
        elif not (words[:1] == ["start"] and len(words) == 6 and direction):
            continue
        over = "start" if words[0] == "start" else "interval"
        rows[(direction, over)] = Row(direction, over, int(words[1]), seconds(words[2]), seconds(words[4]))
    return rows
