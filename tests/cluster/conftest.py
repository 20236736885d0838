"""The cluster suites run against the local harness (``tests/harness/cluster``): a real kube-apiserver, the
real operator and one real agent on a network-namespace node.

The session brings the harness up once (building its tools on first use, cached outside the repo) or
reuses one that is already up, and takes it down at the end only if it brought it up (set
``MACE_HARNESS_KEEP=1`` to keep it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_client import Cluster, harness, read_env, unique

from mace.probe import GROUP, PLURAL, VERSION

UP_TIMEOUT_S = 3600.0
"""Generous: the first `up` on a machine builds kube-apiserver and kubectl from source."""


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the cluster harness needs root (network namespaces, cgroups, eBPF)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel exposes no BTF: the agent cannot run"
    return None


@pytest.fixture(scope="session", autouse=True)
def cluster_env() -> Iterator[dict[str, str]]:
    """The harness, up for the whole session: ``tests/harness/cluster env`` as a dict."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
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
    """A fresh namespace; its probes and harness pods are removed afterwards (the namespace object stays:
    no namespace controller runs in the harness to finish deleting it)."""
    name = unique("mace-ag")
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        cluster.delete_probe(name, probe["metadata"]["name"], wait=False)
    for pod in cluster.core.list_namespaced_pod(name).items:
        cluster.delete_pod(name, pod.metadata.name)
    for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        cluster.delete_probe(name, probe["metadata"]["name"])
