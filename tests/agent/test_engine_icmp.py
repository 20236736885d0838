"""The engine measures ping's echo requests and replies, over raw and ICMP datagram sockets, v4 and v6,
routed or through a VXLAN overlay."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from pinging import ping_argv, replied_seqs

from mace_lab.events import info_values, shape_problems
from mace_lab.processes import AgentProcess, Child, filter_text
from mace_lab.procfs import sockets
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 12
FIELDS = {"ipv4": ("icmp_seq", "icmp_type", 8, 0), "ipv6": ("icmp6_seq", "icmp6_type", 128, 129)}
ADDRESS_FIELDS = {"ipv4": ("ip_src_addr", "ip_dst_addr"), "ipv6": ("ip6_src_addr", "ip6_dst_addr")}
SOCKET_TABLE = {("raw", "ipv4"): "raw", ("raw", "ipv6"): "raw6",
                ("datagram", "ipv4"): "icmp", ("datagram", "ipv6"): "icmp6"}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize(("kind", "vxlan_port"), [("raw", None), ("datagram", None), ("raw", 4789)],
                         ids=["raw", "datagram", "raw-vxlan"])
def test_ping_requests_and_replies_are_measured(make_topology: Callable[..., Topology], kind: str,
                                                vxlan_port: int | None, family: str) -> None:
    """Through the overlay, the outer device carries the pings inside VXLAN datagrams: the fields are
    still the ping packets' own (the addresses are the pod's and the remote's, not the tunnel's)."""
    t = make_topology(vxlan_port=vxlan_port)
    if kind == "datagram":
        t.allow_ping_sockets(t.pod.ns)
    seq_field, type_field, request_type, reply_type = FIELDS[family]
    src_field, dst_field = ADDRESS_FIELDS[family]
    dest = t.remote.ipv4 if family == "ipv4" else t.remote.ipv6
    ping = Child(t, t.pod.ns, ping_argv(family, dest, COUNT), gated=True)
    text = filter_text(t.uplink_ifindex, ping.pid, [seq_field], [seq_field, type_field, dst_field],
                       in_info=[seq_field, type_field, src_field])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    ping.release()

    ping.wait_until(lambda: bool(ping.lines), 10, "ping's first line")  # printed once its socket is open
    assert {table for table, _ in sockets(ping.pid)} == {SOCKET_TABLE[kind, family]}
    assert ping.wait_exit(30) == 0, ping.stderr()
    replies = replied_seqs(ping)
    assert sorted(replies) == list(range(1, COUNT + 1))

    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert [p for e in out + inbound for p in shape_problems(e)] == []
    assert sorted(info_values(out, seq_field)) == list(range(1, COUNT + 1))
    assert sorted(info_values(inbound, seq_field)) == sorted(replies)
    assert set(info_values(out, type_field)) == {request_type}
    assert set(info_values(inbound, type_field)) == {reply_type}
    assert {e["info"][dst_field] for e in out} == {e["info"][src_field] for e in inbound} == {dest}
    assert {e["proc_id"] for e in out + inbound} == {ping.pid}
    assert all(0 < e["latency_ns"] < 1_000_000_000 for e in out + inbound)
    assert summary["out"]["count"] == COUNT
    assert summary["in"]["count"] == COUNT
    for direction in ("out", "in"):
        stats = summary[direction]
        assert 0 < stats["p50_ns"] <= stats["p90_ns"] <= stats["p99_ns"] <= stats["max_ns"] * 1.1


def _mac(ns: str, dev: str) -> str:
    links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=True,
                                      capture_output=True, text=True).stdout)
    return str(links[0]["address"])


def test_ethernet_info_fields_are_the_outer_devices_frames(topology: Topology) -> None:
    """Ethernet fields in ``info`` (they may not correlate) are read only for the flow layouts that
    ask for them, from the frame on the outer device: egress leaves the node's uplink for the
    remote's interface, ingress arrives from it."""
    t = topology
    node_mac, remote_mac = _mac(t.node, t.remote.uplink), _mac(t.remote.ns, "eth0")
    ping = Child(t, t.pod.ns, ping_argv("ipv4", t.remote.ipv4, COUNT), gated=True)
    eth = ["eth_src_addr", "eth_dst_addr", "eth_proto"]
    text = filter_text(t.uplink_ifindex, ping.pid, ["icmp_id", "icmp_seq"], ["icmp_seq", *eth])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    ping.release()
    assert ping.wait_exit(30) == 0, ping.stderr()
    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    agent.stop()

    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert sorted(info_values(out, "icmp_seq")) == list(range(1, COUNT + 1))
    def frames(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(e["info"]["eth_src_addr"], e["info"]["eth_dst_addr"]) for e in events}

    assert frames(out) == {(node_mac, remote_mac)}
    assert frames(inbound) == {(remote_mac, node_mac)}
    assert set(info_values(out + inbound, "eth_proto")) == {0x0800}
