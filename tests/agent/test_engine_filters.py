"""The process filter and the device filter exclude exactly what they should."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from mace_lab.events import info_int, info_values
from mace_lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_lab.procfs import sockets
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 15
PORT = 7001


def replies(ping: Child) -> int:
    return sum(1 for line in ping.snapshot() if isinstance(line, str) and re.search(r"icmp_seq=\d+", line))


def wait_for_replies(ping: Child, count: int) -> None:
    ping.wait_until(lambda: replies(ping) >= count, 10, f"{count} ping replies")


def test_other_processes_pinging_through_the_same_device_are_not_reported(
        make_topology: Callable[..., Topology]) -> None:
    t: Topology = make_topology(pods=2)
    pod, other_pod = t.pods
    t.allow_ping_sockets(pod.ns)  # datagram sockets: each ping receives only its own replies
    dest = t.remote.ipv4
    # Intruders run for the whole test: one in the same pod, one in another pod (raw socket).
    intruders = [Child(t, pod.ns, ["ping", "-4", "-n", "-i", "0.02", dest]),
                 Child(t, other_pod.ns, ["ping", "-4", "-n", "-i", "0.02", dest])]
    for intruder in intruders:
        wait_for_replies(intruder, 1)
    measured = Child(t, pod.ns, ["ping", "-4", "-n", "-i", "0.05", "-c", str(COUNT), dest], gated=True)
    fields = ["icmp_id", "icmp_seq"]
    text = filter_text(t.uplink_ifindex, measured.pid, fields, [*fields, "ip_src_addr"],
                       in_info=[*fields, "ip_dst_addr"])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    before = [replies(i) for i in intruders]
    measured.release()
    measured.wait_until(lambda: bool(measured.lines), 10, "ping's first line")
    (table, ident), = sockets(measured.pid)
    assert table == "icmp"
    assert measured.wait_exit(30) == 0, measured.stderr()
    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    after = [replies(i) for i in intruders]
    assert all(a - b >= COUNT for a, b in zip(after, before, strict=True)), "intruders were not pinging"
    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert {info_int(e, "icmp_id") for e in out + inbound} == {ident}
    assert sorted(info_values(out, "icmp_seq")) == list(range(1, COUNT + 1))
    assert sorted(info_values(inbound, "icmp_seq")) == list(range(1, COUNT + 1))
    assert {e["info"]["ip_src_addr"] for e in out} == {pod.ipv4}
    assert {e["info"]["ip_dst_addr"] for e in inbound} == {pod.ipv4}
    assert {e["proc_id"] for e in out + inbound} == {measured.pid}
    assert summary["out"]["count"] == COUNT
    assert summary["in"]["count"] == COUNT


@pytest.mark.parametrize("watched", [0, 1])
def test_traffic_leaving_by_another_device_is_not_reported(make_topology: Callable[..., Topology],
                                                           watched: int) -> None:
    t: Topology = make_topology(remotes=2)
    for remote in t.remotes:
        TrafficProcess(t, remote.ns, "udp-server", "--bind", "::", "--port", str(PORT)).wait_ready()
    # One process alternates between the two remotes: even requests leave by uplink0, odd by uplink1.
    dests = [arg for remote in t.remotes for arg in ("--dest", remote.ipv4)]
    client = TrafficProcess(t, t.pod.ns, "udp-client", *dests, "--port", str(PORT), "--count", str(2 * COUNT),
                            "--rate", "60", "--seq-base", "0", gated=True)
    device = t.remotes[watched]
    text = filter_text(device.uplink_ifindex, client.pid, ["udp_payload"], ["udp_payload", "ip_dst_addr"],
                       in_info=["udp_payload", "ip_src_addr"])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    client.release()
    requests, done = client.wait_done()
    assert done == {"sent": 2 * COUNT, "received": 2 * COUNT}
    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    expected = sorted(r["seq"] for r in requests if r["dest"] == device.ipv4)
    assert len(expected) == COUNT
    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert sorted(info_values(out, "udp_payload")) == expected
    assert sorted(info_values(inbound, "udp_payload")) == expected
    assert {e["info"]["ip_dst_addr"] for e in out} == {device.ipv4}
    assert {e["info"]["ip_src_addr"] for e in inbound} == {device.ipv4}
    assert summary["out"]["count"] == COUNT
    assert summary["in"]["count"] == COUNT
