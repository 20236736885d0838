"""The reliability suite runs against the local cluster harness, as tests/cluster does (same session
handling: brought up once, taken down at the end only if this session brought it up)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from harness_client import Cluster, harness_session, skip_reason, unique

from mace.probe import GROUP, PLURAL, VERSION


@pytest.fixture(scope="session", autouse=True)
def cluster_env() -> Iterator[dict[str, str]]:
    """The harness, up for the whole session: ``tests/harness/cluster env`` as a dict."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with harness_session() as env:
        yield env


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
