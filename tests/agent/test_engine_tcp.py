"""The engine measures TCP data segments in both directions, v4 and v6, routed or through a VXLAN
overlay.

The TCP sequence numbers the engine reports are compared with those a packet socket on the outer
device saw on the data-carrying segments (pure ACKs and the handshake carry no data and are not
measured); through the overlay, with those a packet socket saw on the node's VXLAN device (the same
segments, before encapsulation and after decapsulation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mace_lab.events import info_int, info_values, shape_problems
from mace_lab.processes import AgentProcess, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

PORT = 7003


def data_segments(capture: TrafficProcess, outgoing: bool) -> list[dict[str, Any]]:
    return [r for r in capture.records("real_ns")
            if r.get("proto") == "tcp" and r["outgoing"] == outgoing and r["data_len"] > 0]


@pytest.mark.parametrize(("family", "count", "response_bytes", "vxlan_port", "file_calls"), [
    ("ipv4", 12, 64, None, False), ("ipv6", 12, 64, None, False),
    ("ipv4", 4, 40_000, None, False),  # each response spans several segments (and device packets)
    ("ipv4", 12, 64, 4789, False),
    ("ipv4", 4, 40_000, None, True),  # write and read, as Go, Java and Node.js use their sockets
], ids=["ipv4", "ipv6", "ipv4-large", "ipv4-vxlan", "ipv4-large-write-read"])
def test_tcp_data_in_both_directions_is_measured(make_topology: Callable[..., Topology], family: str,
                                                 count: int, response_bytes: int,
                                                 vxlan_port: int | None, file_calls: bool) -> None:
    t = make_topology(vxlan_port=vxlan_port)
    dest = t.remote.ipv4 if family == "ipv4" else t.remote.ipv6
    TrafficProcess(t, t.remote.ns, "tcp-server", "--bind", "::", "--port", str(PORT)).wait_ready()
    seen_on = t.remote.uplink if vxlan_port is None else "vxlan0"
    capture = TrafficProcess(t, t.node, "capture", "--dev", seen_on, "--port", str(PORT),
                             "--duration", "120")
    capture.wait_ready()
    client = TrafficProcess(t, t.pod.ns, "tcp-client", "--dest", dest, "--port", str(PORT),
                            "--count", str(count), "--rate", "20", "--request-bytes", "200",
                            "--response-bytes", str(response_bytes),
                            *(["--file-calls"] if file_calls else []), gated=True)
    text = filter_text(t.uplink_ifindex, client.pid, ["tcp_seq"], ["tcp_seq", "tcp_dst_port"],
                       in_info=["tcp_seq", "tcp_src_port"])
    agent = AgentProcess(t, t.node, text)
    agent.wait_attached()
    client.release()
    _, done = client.wait_done()
    assert done == {"sent": count, "received": count}

    def all_captured() -> bool:
        received = sum(r["data_len"] for r in data_segments(capture, False))
        return len(data_segments(capture, True)) >= count and received >= count * response_bytes
    capture.wait_until(all_captured, 10, "every request and response captured")
    sent_seqs = sorted(r["tcp_seq"] for r in data_segments(capture, True))
    received_seqs = sorted(r["tcp_seq"] for r in data_segments(capture, False))
    assert len(sent_seqs) == count  # one segment per 200-byte request
    agent.wait_events(lambda e: e["direction"] == "in", len(received_seqs), allow_exit=True)
    agent.wait_events(lambda e: e["direction"] == "out", count, allow_exit=True)
    summary = agent.stop()

    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert [p for e in out + inbound for p in shape_problems(e)] == []
    assert sorted(info_values(out, "tcp_seq")) == sent_seqs
    assert sorted(info_values(inbound, "tcp_seq")) == received_seqs
    assert {info_int(e, "tcp_dst_port") for e in out} == {PORT}
    assert {info_int(e, "tcp_src_port") for e in inbound} == {PORT}
    assert {e["proc_id"] for e in out + inbound} == {client.pid}
    assert summary["out"]["count"] == count
    assert summary["in"]["count"] == len(received_seqs)
