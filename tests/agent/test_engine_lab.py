"""The lab the engine suites stand on: topologies, gated processes, traffic and capture tools.

These need root and network namespaces but no eBPF.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from mace_lab.processes import Child, TrafficProcess
from mace_lab.topology import Tbf, Topology

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def root_state() -> list[str]:
    """The root namespace's address and route lines in the lab's ranges (others may change the rest)."""
    lines: list[str] = []
    for args in (["addr"], ["route"], ["-6", "route"]):
        out = subprocess.run(["ip", "-o", *args], capture_output=True, text=True, check=True).stdout
        lines += [line for line in out.splitlines() if "10.213." in line or "fd00:213:" in line]
    return sorted(lines)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_topology_wires_pods_to_remotes_and_removes_everything() -> None:
    before = root_state()
    with Topology(pods=2, remotes=2) as t:
        made = set(t.namespaces)
        assert made <= namespaces()
        assert all(name.startswith(t.prefix) for name in made)
        # verify() already pinged every remote from every pod over v4 and v6; check the paths.
        for remote in t.remotes:
            route = t.run(t.pod.ns, ["ip", "route", "get", remote.ipv4])
            assert "10.213.200.1" in route
            assert t.ifindex(t.node, remote.uplink) == remote.uplink_ifindex
        assert len({p.ipv4 for p in t.pods}) == len({p.ipv6 for p in t.pods}) == 2
    assert not made & namespaces()
    assert root_state() == before


def test_topology_is_removed_after_an_error_inside() -> None:
    with pytest.raises(RuntimeError), Topology() as t:
        made = set(t.namespaces)
        sleeper = t.popen(t.pod.ns, ["sleep", "600"])
        raise RuntimeError("boom")
    assert not made & namespaces()
    assert sleeper.poll() is not None


def test_gated_process_keeps_its_pid_and_waits_for_release(topology: Topology) -> None:
    t = topology
    ping = Child(t, t.pod.ns, ["ping", "-4", "-n", "-c", "2", "-i", "0.05", t.remote.ipv4], gated=True)
    assert ping.running
    assert ping.snapshot() == []
    ping.release()
    assert ping.wait_exit(20) == 0
    assert any("2 received" in line for line in ping.snapshot())


def test_udp_client_measures_and_server_echoes(topology: Topology) -> None:
    t = topology
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", "7001").wait_ready()
    for dest in (t.remote.ipv4, t.remote.ipv6):
        client = TrafficProcess(t, t.pod.ns, "udp-client", "--dest", dest, "--port", "7001", "--count", "5",
                                "--rate", "100", "--seq-base", "40")
        requests, done = client.wait_done()
        assert done == {"sent": 5, "received": 5}
        assert [r["seq"] for r in requests] == [40, 41, 42, 43, 44]
        for r in requests:
            assert r["send_start_ns"] <= r["send_end_ns"] <= r["recv_start_ns"] <= r["recv_end_ns"]
            assert r["rtt_ns"] == r["recv_end_ns"] - r["send_start_ns"]


def test_receiver_sleep_delays_the_recvmsg(topology: Topology) -> None:
    t = topology
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", "7001").wait_ready()
    client = TrafficProcess(t, t.pod.ns, "udp-client", "--dest", t.remote.ipv4, "--port", "7001",
                            "--count", "3", "--rate", "20", "--sleep-ms", "15")
    requests, _ = client.wait_done()
    assert all(r["recv_start_ns"] - r["send_end_ns"] >= 15_000_000 for r in requests)


def test_tcp_client_gets_the_response_size_it_asks_for(topology: Topology) -> None:
    t = topology
    TrafficProcess(t, t.remote.ns, "tcp-server", "--bind", "::", "--port", "7003").wait_ready()
    client = TrafficProcess(t, t.pod.ns, "tcp-client", "--dest", t.remote.ipv6, "--port", "7003",
                            "--count", "3", "--rate", "50", "--request-bytes", "300",
                            "--response-bytes", "5000")
    requests, done = client.wait_done()
    assert done == {"sent": 3, "received": 3}
    assert all(r["rtt_ns"] > 0 for r in requests)


def test_capture_timestamps_frames_on_the_outer_device(make_topology: Callable[..., Topology]) -> None:
    t = make_topology(tbf=Tbf(rate_bps=8_000_000, burst_bytes=3000, limit_bytes=100_000))
    assert "tbf" in t.run(t.node, ["tc", "qdisc", "show", "dev", "uplink0"])
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", "7001").wait_ready()
    capture = TrafficProcess(t, t.node, "capture", "--dev", "uplink0", "--port", "7001", "--count", "4")
    capture.wait_ready()
    client = TrafficProcess(t, t.pod.ns, "udp-client", "--dest", t.remote.ipv4, "--port", "7001",
                            "--count", "2", "--rate", "50")
    requests, _ = client.wait_done()
    assert capture.wait_exit(20) == 0
    frames = capture.records("real_ns")
    assert [(f["outgoing"], f["payload8"]) for f in frames] == [(True, 1), (False, 1), (True, 2), (False, 2)]
    for r in requests:
        out, back = (f["real_ns"] - r["real_offset_ns"] for f in frames if f["payload8"] == r["seq"])
        assert r["send_start_ns"] <= out <= back <= r["recv_end_ns"]


def test_deleting_the_uplink_removes_the_path(topology: Topology) -> None:
    t = topology
    t.delete_link(t.node, t.remote.uplink)
    links = json.loads(t.run(t.node, ["ip", "-j", "link", "show"]))
    assert t.remote.uplink not in {link["ifname"] for link in links}
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(t.exec_argv(t.pod.ns, ["ping", "-c", "1", "-W", "1", t.remote.ipv4]),
                       capture_output=True, check=True)
