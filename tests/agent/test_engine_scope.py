"""A probe measures every process of its pod's cgroups: a pre-forking server's children, a shell's
ping; a process of another cgroup in the same network namespace is never reported."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from mace_lab.events import info_int, info_values
from mace_lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 24
CLIENTS = 3
PORT, OTHER_PORT = 7101, 7102
SEQ_BASE = 0x4D41_4345_5000_0001


def join(cgroup: Path, child: Child) -> None:
    (cgroup / "cgroup.procs").write_text(str(child.pid))


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_prefork_server_children_are_measured_and_another_cgroup_never(
        topology: Topology, make_cgroup: Callable[[str], Path], protocol: str) -> None:
    """Clients run at once, so the workers read the shared socket concurrently (UDP), and each event
    names the worker that read its datagram (the server logs who read what)."""
    t = topology
    pod_cgroup, other_cgroup = make_cgroup("pod"), make_cgroup("other")
    log = ("--log",) if protocol == "udp" else ()
    server = TrafficProcess(t, t.pod.ns, f"{protocol}-server", "--bind", "::", "--port", str(PORT),
                            "--workers", "3", *log, gated=True)
    other = TrafficProcess(t, t.pod.ns, f"{protocol}-server", "--bind", "::", "--port", str(OTHER_PORT),
                           gated=True)
    join(pod_cgroup, server)
    join(other_cgroup, other)
    corr = ["udp_payload"] if protocol == "udp" else ["tcp_seq"]
    info = ["udp_payload"] if protocol == "udp" else ["tcp_src_port"]
    in_info = ["udp_payload", "udp_dst_port"] if protocol == "udp" else ["tcp_dst_port"]
    text = filter_text(t.uplink_ifindex, server.pid, corr, info, in_info=in_info)
    agent = AgentProcess(t, t.node, text, extra_args=("--scope", "cgroup"))
    agent.wait_attached()
    server.release()
    other.release()
    workers = set(server.wait_ready()["workers"])
    other.wait_ready()
    clients = []
    targets = [(PORT, SEQ_BASE + (i << 16)) for i in range(CLIENTS)] + [(OTHER_PORT, SEQ_BASE + (1 << 20))]
    for port, seq_base in targets:  # all at once; packet ids of their own
        clients.append(TrafficProcess(t, t.remote.ns, f"{protocol}-client", "--dest", t.pod.ipv4, "--port",
                                      str(port), "--count", str(COUNT), "--rate", "100",
                                      "--seq-base", str(seq_base)))
    for client in clients:
        _records, done = client.wait_done()
        assert done == {"sent": COUNT, "received": COUNT}
    total = CLIENTS * COUNT
    agent.wait_events(lambda e: e["direction"] == "out", total)
    agent.wait_events(lambda e: e["direction"] == "in", total)
    summary = agent.stop()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    pids = {e["proc_id"] for e in agent.events}
    assert pids <= workers, f"events from {pids - workers}, not the pod's workers {workers}"
    assert other.pid not in pids
    assert summary["out"]["count"] == summary["in"]["count"] == total
    measured = {d: [e for e in agent.events if e["direction"] == d] for d in ("in", "out")}
    if protocol == "udp":
        assert {info_int(e, "udp_dst_port") for e in measured["in"]} == {PORT}
        read_by = {r["read"]: r["pid"] for r in server.records("read")}
        assert len(read_by) == total
        wrong = [(seq, e["proc_id"], read_by[seq]) for e in measured["in"]
                 for seq in info_values([e], "udp_payload") if e["proc_id"] != read_by[seq]]
        assert wrong == [], "datagrams measured for a worker that did not read them"
    else:
        assert {info_int(e, "tcp_dst_port") for e in measured["in"]} == {PORT}


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
