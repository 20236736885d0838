"""End to end on a kind cluster, through tests/e2e_kind/run.sh (which says why it skips, exit code 77)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.kind

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "e2e_kind" / "run.sh"
SKIPPED = 77
TIMEOUT_S = 2400.0
"""Creating three kind nodes and building both images from scratch takes minutes."""


def test_a_probe_on_a_pinging_pod_fills_its_status_and_metrics_on_kind() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode == SKIPPED:
        reason = [line for line in done.stderr.splitlines() if "SKIP:" in line]
        pytest.skip(reason[-1].split("SKIP:", 1)[1].strip() if reason else "run.sh skipped")
    assert done.returncode == 0, done.stderr[-6000:]
    assert "pinger-icmp" in done.stdout


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
