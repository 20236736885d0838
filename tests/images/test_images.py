"""The container images, built from the real Dockerfiles with buildah and run under a real containerd.

The agent image runs as the Helm chart runs it: host PID namespace, the chart's capabilities only (all
others dropped), the runtime's default seccomp profile, a read-only root file system with the chart's
writable directories, and the chart's host mounts. The operator image runs as its non-root user.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from containerd_runtime import DEFAULT_CAPS, Containerd, capability_args
from image_build import REPO, Built
from mace_agent.kernel import ensure_tracing_mounts

from mace_lab.processes import AgentProcess, Child, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.images

ENTRYPOINT = "/usr/local/bin/mace-agent-entrypoint"
IMAGE_HEADERS = "/opt/mace/kernel-headers"
OPERATOR_UID = 65532
PINGS = 12

# Compiles, loads and attaches a trivial tracepoint program the way the engine prepares the kernel.
SMOKE_PROGRAM = """
import json, os
from mace_agent import kernel
kernel.prepare()
from bcc import BPF
b = BPF(text="TRACEPOINT_PROBE(net, net_dev_xmit) { return 0; }")
print(json.dumps({"headers": os.environ.get("BCC_KERNEL_SOURCE"), "tracepoints": b.num_open_tracepoints(),
                  "uid": os.geteuid()}))
b.cleanup()
"""


CAPABILITY_BITS = {"SYS_PTRACE": 19, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39}


def chart_agent_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((REPO / "helm" / "mace" / "values.yaml").read_text())
    return dict(values["agent"])


def chart_capabilities() -> list[str]:
    """The chart's agent capabilities that this machine can grant at all (its own bounding set).

    A sandbox may lack one in its bounding set; a container cannot be given what its runtime lacks.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        bounding = next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
    caps = list(chart_agent_values()["capabilities"])
    assert set(caps) <= set(CAPABILITY_BITS), f"add the new capability's bit number here: {caps}"
    return [cap for cap in caps if bounding >> CAPABILITY_BITS[cap] & 1]


def agent_flags(*, capabilities: Sequence[str], host_mounts: bool = True) -> list[str]:
    """ctr flags that run a container the way the chart's DaemonSet runs the agent."""
    flags = ["--with-ns", f"pid:/proc/{os.getpid()}/ns/pid", "--seccomp", "--read-only",
             "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev",
             "--mount", "type=tmpfs,src=tmpfs,dst=/var/cache/mace-agent,options=rw:nosuid:nodev",
             *capability_args(capabilities)]
    if host_mounts:
        binds = [("/sys/kernel/debug", "/sys/kernel/debug", "rbind:rw"),
                 ("/sys/kernel/tracing", "/sys/kernel/tracing", "rbind:rw"),
                 ("/lib/modules", "/lib/modules", "rbind:ro"),
                 ("/usr/src", "/usr/src", "rbind:ro"),
                 ("/sys/fs/cgroup", "/host/sys/fs/cgroup", "rbind:ro")]
        for src, dst, options in binds:
            if Path(src).is_dir():
                flags += ["--mount", f"type=bind,src={src},dst={dst},options={options}"]
    return flags


def run(containerd: Containerd, image: str, argv: Sequence[str], flags: Sequence[str] = (),
        timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    name = f"mace-smoke-{uuid.uuid4().hex[:8]}"
    return containerd.ctr("run", "--rm", *flags, image, name, *argv, check=False, timeout=timeout)


def last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in: {text!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- operator -----------------------------------------------------------------------------------------

def test_operator_image_prints_its_help_as_a_non_root_user(built: Built, containerd: Containerd) -> None:
    done = run(containerd, built.operator, ["mace-operator", "--help"], ["--read-only"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mace-operator")
    assert "--all-namespaces" in done.stdout
    ident = run(containerd, built.operator, ["id", "-u"], ["--read-only"])
    assert ident.stdout.strip() == str(OPERATOR_UID)


def test_operator_image_has_no_bpf_dependencies(built: Built, containerd: Containerd) -> None:
    probe = ("import importlib.util, os, glob; print(importlib.util.find_spec('bcc') is None, "
             f"os.path.exists('{IMAGE_HEADERS}'), glob.glob('/usr/lib/*/libbcc*') == [])")
    done = run(containerd, built.operator, ["python3", "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


# -- agent --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_tracing() -> None:
    """tracefs and debugfs mounted on the host, as on a node whose init system mounts them."""
    ensure_tracing_mounts()


@pytest.mark.usefixtures("node_tracing")
def test_agent_image_loads_a_bpf_program_with_the_charts_capabilities(built: Built,
                                                                    containerd: Containerd) -> None:
    caps = chart_capabilities()
    done = run(containerd, built.agent, [ENTRYPOINT, "python3", "-c", SMOKE_PROGRAM],
               ["--net-host", *agent_flags(capabilities=caps)])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["tracepoints"] == 1
    assert result["uid"] == 0
    # This node has Debian header packages in /usr/src but none for its own kernel: the engine merges
    # them into its cache (a writable emptyDir in the chart), not the image's own tree.
    if list(Path("/usr/src").glob("linux-headers-*-common")):
        assert result["headers"].startswith("/var/cache/mace-agent/"), result


def test_agent_image_falls_back_to_its_own_kernel_headers_and_mounts(built: Built,
                                                                     containerd: Containerd) -> None:
    caps = chart_capabilities()
    done = run(containerd, built.agent, [ENTRYPOINT, "python3", "-c", SMOKE_PROGRAM],
               ["--net-host", *agent_flags(capabilities=caps, host_mounts=False)])
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["headers"] == IMAGE_HEADERS
    assert result["tracepoints"] == 1


def test_agent_image_without_the_capabilities_says_what_it_lacks(built: Built,
                                                                 containerd: Containerd) -> None:
    done = run(containerd, built.agent, [ENTRYPOINT, "python3", "-c", SMOKE_PROGRAM],
               ["--net-host", *agent_flags(capabilities=DEFAULT_CAPS, host_mounts=False)])
    assert done.returncode != 0
    assert "CAP_BPF" in done.stderr and "CAP_PERFMON" in done.stderr, done.stderr


def test_agent_image_entrypoint_runs_the_agent_commands(built: Built, containerd: Containerd) -> None:
    done = run(containerd, built.agent, [ENTRYPOINT, "mace-agent", "serve", "--help"])
    assert done.returncode == 0, done.stderr
    assert "--node" in done.stdout and "--operator-username" in done.stdout


@pytest.mark.parametrize("component", ["agent", "operator"])
def test_images_ship_no_test_lab(built: Built, containerd: Containerd, component: str) -> None:
    """The lab stays in the source checkout: ``mace demo`` in an image says so, without a traceback."""
    done = run(containerd, getattr(built, component), ["mace", "demo"])
    assert done.returncode == 1
    assert done.stderr.startswith("mace demo: needs the test lab"), done.stderr


class ImageAgent(AgentProcess):
    """``mace-agent run`` inside the agent image (``ctr run`` in the foreground forwards signals)."""

    def __init__(self, topology: Topology, argv: Sequence[str]) -> None:
        self.events = []
        self.event_count = 0
        self.summary = None
        self.attached = False
        Child.__init__(self, topology, topology.node, argv)


@pytest.mark.usefixtures("node_tracing")
def test_agent_image_measures_a_pods_pings_on_its_node(built: Built, containerd: Containerd) -> None:
    caps = chart_capabilities()
    with Topology() as t:
        ping = Child(t, t.pod.ns, ["ping", "-4", "-n", "-i", "0.05", "-c", str(PINGS), t.remote.ipv4],
                     gated=True)
        text = filter_text(t.uplink_ifindex, ping.pid, ["icmp_seq"], ["icmp_seq", "icmp_type"])
        argv = containerd.ctr_argv(
            "run", "--rm", "--with-ns", f"network:/run/netns/{t.node}",
            *agent_flags(capabilities=caps), built.agent, f"mace-engine-{uuid.uuid4().hex[:8]}",
            ENTRYPOINT, "mace-agent", "run", "--filter", text, "--format", "json")
        agent = ImageAgent(t, argv)
        agent.wait_attached(timeout=120)
        ping.release()
        assert ping.wait_exit(30) == 0, ping.stderr()
        agent.wait_events(lambda e: e["direction"] == "in", PINGS)
        summary = agent.stop()
    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert {e["proc_id"] for e in out + inbound} == {ping.pid}
    assert summary["out"]["count"] == PINGS
    assert summary["in"]["count"] == PINGS
    assert all(0 < e["latency_ns"] < 1_000_000_000 for e in out + inbound)


MAX_MB = {"agent": 800, "operator": 400}
"""Uncompressed size bounds (measured 2026-11: agent 574 MB, operator 287 MB; bcc's LLVM is most of the
agent)."""
UNITS = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


def image_megabytes(image: str) -> float:
    done = subprocess.run(["buildah", "images", "--format", "{{.Size}}", image], capture_output=True,
                          text=True, check=True)
    number, unit = done.stdout.split()[:2]
    return float(number) * UNITS[unit]


def test_image_sizes_are_bounded(built: Built) -> None:
    sizes = {"agent": image_megabytes(built.agent), "operator": image_megabytes(built.operator)}
    assert all(sizes[name] <= bound for name, bound in MAX_MB.items()), sizes
    assert sizes["operator"] < sizes["agent"]
