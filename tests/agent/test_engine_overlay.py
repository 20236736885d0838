"""Through a VXLAN overlay the outer device carries only encapsulated pod packets: the engine reads
them from the headers they encapsulate, on the configured VXLAN ports only."""

from __future__ import annotations

from typing import Any

import pytest
from mace_agent.lab.events import info_int, info_values, shape_problems
from mace_agent.lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_agent.lab.topology import Topology
from pinging import ping_argv, replied_seqs

pytestmark = pytest.mark.ebpf

COUNT = 10
UDP_PORT = 7011
TCP_PORT = 7012
ADDRESS_FIELDS = {"ipv4": ("icmp_seq", "ip_dst_addr", "ip_src_addr"),
                  "ipv6": ("icmp6_seq", "ip6_dst_addr", "ip6_src_addr")}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_ping_over_vxlan_is_measured_on_the_outer_device(make_topology: Any, family: str) -> None:
    t: Topology = make_topology(vxlan_port=4789)
    seq_field, dst_field, src_field = ADDRESS_FIELDS[family]
    dest = t.remote.ipv4 if family == "ipv4" else t.remote.ipv6
    ping = Child(t, t.pod.ns, ping_argv(family, dest, COUNT), gated=True)
    text = filter_text(t.uplink_ifindex, ping.pid, [seq_field], [seq_field, dst_field],
                       in_info=[seq_field, src_field])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    ping.release()
    assert ping.wait_exit(30) == 0, ping.stderr()
    replies = replied_seqs(ping)
    assert sorted(replies) == list(range(1, COUNT + 1))

    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert [p for e in out + inbound for p in shape_problems(e)] == []
    assert sorted(info_values(out, seq_field)) == list(range(1, COUNT + 1))
    assert sorted(info_values(inbound, seq_field)) == sorted(replies)
    # the addresses are the pod packet's, not the tunnel's (the uplink addresses)
    assert {e["info"][dst_field] for e in out} == {dest}
    assert {e["info"][src_field] for e in inbound} == {dest}
    assert summary["out"]["count"] == COUNT
    assert summary["in"]["count"] == COUNT


def test_udp_over_vxlan_on_linux_default_port_is_measured(make_topology: Any) -> None:
    t: Topology = make_topology(vxlan_port=8472)
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", str(UDP_PORT)).wait_ready()
    client = TrafficProcess(t, t.pod.ns, "udp-client", "--dest", t.remote.ipv4, "--port", str(UDP_PORT),
                            "--count", str(COUNT), "--rate", "50", gated=True)
    text = filter_text(t.uplink_ifindex, client.pid, ["udp_payload"], ["udp_payload", "udp_dst_port"],
                       in_info=["udp_payload", "udp_src_port"])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    client.release()
    requests, done = client.wait_done()
    assert done == {"sent": COUNT, "received": COUNT}

    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    sent = [r["seq"] for r in requests]
    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert sorted(info_values(out, "udp_payload")) == sent
    assert sorted(info_values(inbound, "udp_payload")) == sent
    assert {info_int(e, "udp_dst_port") for e in out} == {UDP_PORT}
    assert {info_int(e, "udp_src_port") for e in inbound} == {UDP_PORT}
    assert summary["out"]["count"] == summary["in"]["count"] == COUNT


def test_tcp_over_vxlan_is_measured(make_topology: Any) -> None:
    """TCP data segments, each compared with what a packet socket saw on the node's VXLAN device
    (the same segments before encapsulation and after decapsulation)."""
    t: Topology = make_topology(vxlan_port=4789)
    TrafficProcess(t, t.remote.ns, "tcp-server", "--bind", "::", "--port", str(TCP_PORT)).wait_ready()
    capture = TrafficProcess(t, t.node, "capture", "--dev", "vxlan0", "--port", str(TCP_PORT),
                             "--duration", "120")
    capture.wait_ready()
    client = TrafficProcess(t, t.pod.ns, "tcp-client", "--dest", t.remote.ipv4, "--port", str(TCP_PORT),
                            "--count", str(COUNT), "--rate", "20", "--request-bytes", "200",
                            "--response-bytes", "64", gated=True)
    text = filter_text(t.uplink_ifindex, client.pid, ["tcp_seq"], ["tcp_seq"], in_info=["tcp_seq"])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    client.release()
    _, done = client.wait_done()
    assert done == {"sent": COUNT, "received": COUNT}

    def segments(outgoing: bool) -> list[int]:
        return sorted(r["tcp_seq"] for r in capture.records("real_ns")
                      if r.get("proto") == "tcp" and r["outgoing"] == outgoing and r["data_len"] > 0)
    capture.wait_until(lambda: len(segments(True)) >= COUNT and len(segments(False)) >= COUNT, 10,
                       "every request and response captured")
    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    agent.wait_events(lambda e: e["direction"] == "out", COUNT)
    agent.stop()

    assert sorted(info_values(agent.events_of("out"), "tcp_seq")) == segments(True)
    assert sorted(info_values(agent.events_of("in"), "tcp_seq")) == segments(False)


@pytest.mark.parametrize("ports", ["", "8472"])
def test_vxlan_packets_on_other_ports_are_not_read_as_overlay(make_topology: Any, ports: str) -> None:
    """With VXLAN parsing off, or on other ports, the outer device shows the engine only UDP tunnel
    packets, which an ICMP filter never matches: nothing is measured, and nothing goes wrong."""
    t: Topology = make_topology(vxlan_port=4789)
    ping = Child(t, t.pod.ns, ping_argv("ipv4", t.remote.ipv4, COUNT), gated=True)
    text = filter_text(t.uplink_ifindex, ping.pid, ["icmp_seq"], ["icmp_seq"])
    agent = AgentProcess(t, t.node, text, extra_args=["--vxlan-ports", ports])
    agent.wait_attached()
    ping.release()
    assert ping.wait_exit(30) == 0, ping.stderr()
    summary = agent.stop()

    assert agent.events == []
    assert summary["out"]["count"] == summary["in"]["count"] == 0
    assert summary["counters"]["out_inserted"] == COUNT  # the requests were seen leaving the pod
    assert summary["counters"]["in_inserted"] == 0  # no tunnel packet was read as ICMP
