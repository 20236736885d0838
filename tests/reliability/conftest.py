"""The reliability suite runs against the local cluster harness, as tests/cluster does (same session
handling: brought up once, taken down at the end only if this session brought it up)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from harness_client import Cluster, harness, read_env, unique

from mace.probe import GROUP, PLURAL, VERSION

UP_TIMEOUT_S = 3600.0


@pytest.fixture(scope="session", autouse=True)
def cluster_env() -> Iterator[dict[str, str]]:
    """The harness, up for the whole session: ``tests/harness/cluster env`` as a dict."""
    if os.geteuid() != 0:
        pytest.skip("the cluster harness needs root (network namespaces, cgroups, eBPF)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("the kernel exposes no BTF: the agent cannot run")
    started = harness("status", check=False).returncode != 0
    if started:
        harness("up", timeout=UP_TIMEOUT_S)
    try:
        yield read_env()
    finally:
        if started and not os.environ.get("MACE_HARNESS_KEEP"):
            harness("down", timeout=300)


@pytest.fixture(scope="session")
def cluster(cluster_env: dict[str, str]) -> Cluster:
    return Cluster(cluster_env)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace; its probes and harness pods are removed afterwards."""
    name = unique("mace-rel")
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        cluster.delete_probe(name, probe["metadata"]["name"], wait=False)
    for pod in cluster.core.list_namespaced_pod(name).items:
        cluster.delete_pod(name, pod.metadata.name)
    for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        cluster.delete_probe(name, probe["metadata"]["name"])
