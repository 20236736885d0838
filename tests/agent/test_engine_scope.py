"""A probe measures every process of its pod's cgroups: a pre-forking server's children, a shell's
ping; a process of another cgroup in the same network namespace is never reported."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from mace_lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 24
PORT, OTHER_PORT = 7101, 7102
SEQ_BASE = 0x4D41_4345_5000_0001


def join(cgroup: Path, child: Child) -> None:
    (cgroup / "cgroup.procs").write_text(str(child.pid))


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_prefork_server_children_are_measured_and_another_cgroup_never(
        topology: Topology, make_cgroup: Callable[[str], Path], protocol: str) -> None:
    t = topology
    pod_cgroup, other_cgroup = make_cgroup("pod"), make_cgroup("other")
    server = TrafficProcess(t, t.pod.ns, f"{protocol}-server", "--bind", "::", "--port", str(PORT),
                            "--workers", "3", gated=True)
    other = TrafficProcess(t, t.pod.ns, f"{protocol}-server", "--bind", "::", "--port", str(OTHER_PORT),
                           gated=True)
    join(pod_cgroup, server)
    join(other_cgroup, other)
    corr = ["udp_payload"] if protocol == "udp" else ["tcp_seq"]
    info = ["udp_dst_port"] if protocol == "udp" else ["tcp_src_port"]
    text = filter_text(t.uplink_ifindex, server.pid, corr, info,
                       in_info=["udp_dst_port"] if protocol == "udp" else ["tcp_dst_port"])
    agent = AgentProcess(t, t.node, text, extra_args=("--scope", "cgroup"))
    agent.wait_attached()
    server.release()
    other.release()
    workers = set(server.wait_ready()["workers"])
    other.wait_ready()
    clients = []
    for port, seq_base in ((PORT, SEQ_BASE), (OTHER_PORT, SEQ_BASE + (1 << 20))):  # ids of their own
        clients.append(TrafficProcess(t, t.remote.ns, f"{protocol}-client", "--dest", t.pod.ipv4, "--port",
                                      str(port), "--count", str(COUNT), "--rate", "100",
                                      "--seq-base", str(seq_base)))
    for client in clients:
        _records, done = client.wait_done()
        assert done == {"sent": COUNT, "received": COUNT}
    # Every reply is measured. A UDP socket read by several threads at once gives each returning thread
    # the datagram the socket's watch noted last, which another thread may have taken first: some of
    # those requests go unmeasured (counted as unmatched, never misattributed). TCP hands each
    # connection to one worker: all of them are measured.
    least = COUNT // 2 if protocol == "udp" else COUNT
    agent.wait_events(lambda e: e["direction"] == "out", COUNT)
    agent.wait_events(lambda e: e["direction"] == "in", least)
    summary = agent.stop()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    pids = {e["proc_id"] for e in agent.events}
    assert pids <= workers, f"events from {pids - workers}, not the pod's workers {workers}"
    assert other.pid not in pids
    measured = {d: [e for e in agent.events if e["direction"] == d] for d in ("in", "out")}
    ports = "udp_dst_port" if protocol == "udp" else "tcp_dst_port"
    assert {e["info"][ports] for e in measured["in"]} == {PORT}
    assert summary["out"]["count"] == COUNT
    assert least <= summary["in"]["count"] <= COUNT


def test_a_shells_ping_child_is_measured_with_cgroup_scope(topology: Topology,
                                                            make_cgroup: Callable[[str], Path]) -> None:
    t = topology
    pod = make_cgroup("shell")
    text_of = {}
    for scope in ("cgroup", "process"):
        shell = Child(t, t.pod.ns, ["sh", "-c", f"ping -c {COUNT // 2} -i 0.05 {t.remote.ipv4}; exit 0"],
                      gated=True)
        join(pod, shell)
        text_of[scope] = filter_text(t.uplink_ifindex, shell.pid, ["icmp_id", "icmp_seq"], ["icmp_seq"])
        agent = AgentProcess(t, t.node, text_of[scope], extra_args=("--scope", scope))
        agent.wait_attached()
        shell.release()
        assert shell.wait_exit() == 0
        if scope == "cgroup":
            agent.wait_events(lambda e: e["direction"] == "in", COUNT // 2)
        summary = agent.stop()
        if scope == "cgroup":
            assert summary["out"]["count"] == summary["in"]["count"] == COUNT // 2
            assert shell.pid not in {e["proc_id"] for e in agent.events}  # the child's, not the shell's
        else:  # the shell itself sends nothing: process scope measures none of its child's packets
            assert summary["out"]["count"] == summary["in"]["count"] == 0
