"""Fixtures of the e2e suite: one cluster per provider (the real test node, marker ``node``; kind, marker
``kind``), shared by the whole session, and a namespace of its own for each test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_cluster import Cluster, KindCluster, NodeCluster, kind_skip_reason, node_skip_reason

PROVIDERS = {"node": (NodeCluster, node_skip_reason), "kind": (KindCluster, kind_skip_reason)}
HERE = Path(__file__).resolve().parent
_open: list[Cluster] = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Remove the clusters once the session leaves this suite: the rest of the run gets the machine back
    (a running node holds about 700 MiB and some CPU)."""
    if nextitem is None or HERE not in Path(str(nextitem.path)).resolve().parents:
        while _open:
            _open.pop().close()


@pytest.fixture(scope="session", params=[pytest.param("node", marks=pytest.mark.node),
                                        pytest.param("kind", marks=pytest.mark.kind)])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster with the chart installed, made for this session unless one is up already."""
    make, skip_reason = PROVIDERS[request.param]
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    made = make()
    _open.append(made)
    try:
        yield made
    finally:
        if made in _open:
            _open.remove(made)
            made.close()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; its probes and pods are deleted after the test (waited for), then the namespace."""
    test = request.node.originalname.lower().removeprefix("test_")
    short = re.sub(r"[^a-z0-9]+", "-", test)[:30].strip("-")
    name = f"e2e-{short}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "latencyprobes", "--all", "-n", name, "--wait", "--timeout=60s",
                        check=False, timeout=90)
        cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=1", "--wait", "--timeout=60s",
                        check=False, timeout=90)
        # The namespace controller finishes on its own: no later test depends on it (they make their own).
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False, timeout=60)
