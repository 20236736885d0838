"""The cluster suites run against the local harness (``tests/harness/cluster``): a real kube-apiserver, the
real operator and one real agent on a network-namespace node.

The session brings the harness up once (building its tools on first use, cached outside the repo) or
reuses one that is already up, and takes it down at the end only if it brought it up (set
``MACE_HARNESS_KEEP=1`` to keep it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness_client import Cluster, harness_session, skip_reason, unique
from operator_helpers import BarePods

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


@pytest.fixture
def pods(cluster: Cluster) -> Iterator[BarePods]:
    """Pod objects with no process behind them, made by the test and deleted after it."""
    made = BarePods(cluster)
    yield made
    made.delete_all()
