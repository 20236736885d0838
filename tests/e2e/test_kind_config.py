"""kind-config.yaml, which the kind provider of this suite creates its cluster from, stays ready for
machines with a Docker engine."""

from __future__ import annotations

import yaml
from e2e_cluster import REPO

NODE_PATHS = {"/sys/kernel/debug", "/sys/kernel/tracing", "/usr/src"}
"""The agent's host paths (helm/mace) that a kind node does not have of its own: kind already mounts the
Docker host's /lib/modules, and the cgroup tree and /proc are the node's."""


def test_kind_config_gives_every_node_the_agents_host_paths() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker", "worker"]
    for node in config["nodes"]:
        mounts = {m["containerPath"]: m for m in node["extraMounts"]}
        assert set(mounts) == NODE_PATHS
        assert all(m["hostPath"] == path for path, m in mounts.items())
        assert mounts["/usr/src"].get("readOnly") is True
