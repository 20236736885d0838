"""The engine measures a UDP request/response client (sendto/recvmsg, sendmmsg/recvmmsg), v4 and v6,
routed or through a VXLAN overlay."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from mace_lab.events import info_int, info_values, shape_problems
from mace_lab.processes import AgentProcess, ChildError, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

PORT = 7001
COUNT = 20
SEQ_BASE = 0x4D41_4345_0000_0001
"""Sequence numbers the client puts in its payloads ("MACE" then a counter)."""
ADDRESS_FIELDS = {"ipv4": ("ip_src_addr", "ip_dst_addr"), "ipv6": ("ip6_src_addr", "ip6_dst_addr")}


def echo_and_client(t: Topology, command: str, *args: str) -> TrafficProcess:
    """An echo server in the remote namespace and a gated lab client ``command`` in the pod."""
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", str(PORT)).wait_ready()
    return TrafficProcess(t, t.pod.ns, command, "--port", str(PORT), "--seq-base", str(SEQ_BASE), *args,
                          gated=True)


def measured_run(t: Topology, client: TrafficProcess, text: str, requests: int,
                 *agent_args: str) -> tuple[AgentProcess, list[dict[str, Any]]]:
    """Attach an agent for ``text``, then let ``client`` send its ``requests`` and get every reply;
    returns the agent (still running) and the client's per-request records."""
    agent = AgentProcess(t, t.node, text, extra_args=agent_args)
    agent.wait_attached()
    client.release()
    records, done = client.wait_done()
    assert done == {"sent": requests, "received": requests}
    return agent, records


@pytest.mark.parametrize(("family", "vxlan_port"), [("ipv4", None), ("ipv6", None), ("ipv4", 8472)],
                         ids=["ipv4", "ipv6", "ipv4-vxlan"])
def test_udp_requests_and_replies_are_measured(make_topology: Callable[..., Topology], family: str,
                                               vxlan_port: int | None) -> None:
    """Also through an overlay on Linux's default VXLAN port (Flannel's), where the outer device sees
    the datagrams inside VXLAN ones: the ports and addresses reported are still the datagrams' own."""
    t = make_topology(vxlan_port=vxlan_port)
    dest = t.remote.ipv4 if family == "ipv4" else t.remote.ipv6
    src_field, dst_field = ADDRESS_FIELDS[family]
    client = echo_and_client(t, "udp-client", "--dest", dest, "--count", str(COUNT), "--rate", "50")
    text = filter_text(t.uplink_ifindex, client.pid, ["udp_payload"],
                       ["udp_payload", "udp_dst_port", dst_field],
                       in_info=["udp_payload", "udp_src_port", src_field])
    agent, requests = measured_run(t, client, text, COUNT)

    agent.wait_events(lambda e: e["direction"] == "in", COUNT)
    summary = agent.stop()

    sent = [r["seq"] for r in requests]
    out, inbound = agent.events_of("out"), agent.events_of("in")
    assert [p for e in out + inbound for p in shape_problems(e)] == []
    assert sorted(info_values(out, "udp_payload")) == sent
    assert sorted(info_values(inbound, "udp_payload")) == sent
    assert {info_int(e, "udp_dst_port") for e in out} == {PORT}
    assert {info_int(e, "udp_src_port") for e in inbound} == {PORT}
    assert {e["info"][dst_field] for e in out} == {dest}
    assert {e["info"][src_field] for e in inbound} == {dest}
    assert {e["proc_id"] for e in out + inbound} == {client.pid}
    assert summary["out"]["count"] == COUNT
    assert summary["in"]["count"] == COUNT


def test_sends_after_idle_spells_longer_than_the_ttl_are_measured(topology: Topology) -> None:
    """The device hooks skip all work while the process has not sent within the TTL; each send
    must reopen them in time for its own packet."""
    t = topology
    count, ttl_s = 4, 0.2
    client = echo_and_client(t, "udp-client", "--dest", t.remote.ipv4, "--count", str(count),
                             "--rate", str(1 / (3 * ttl_s)))
    text = filter_text(t.uplink_ifindex, client.pid, ["udp_payload"], ["udp_payload"])
    agent, requests = measured_run(t, client, text, count, "--ttl", str(ttl_s))
    agent.wait_events(lambda e: e["direction"] == "out", count)
    summary = agent.stop()
    assert sorted(info_values(agent.events_of("out"), "udp_payload")) == [r["seq"] for r in requests]
    assert summary["out"]["count"] == count


@pytest.mark.parametrize("receive", ["recvmsg", "recvmmsg"])
def test_requests_sent_together_with_sendmmsg_are_each_measured(topology: Topology, receive: str) -> None:
    """glibc's resolver sends its A and AAAA queries in one sendmmsg call: each datagram is measured
    from the call's start. Replies read several at a time by recvmmsg are each measured too."""
    t = topology
    rounds, batch = 8, 3
    client = echo_and_client(t, "udp-batch-client", "--dest", t.remote.ipv4, "--count", str(rounds),
                             "--batch", str(batch), "--rate", "20",
                             *(["--recvmmsg"] if receive == "recvmmsg" else []))
    text = filter_text(t.uplink_ifindex, client.pid, ["udp_payload"], ["udp_payload"])
    agent, requests = measured_run(t, client, text, rounds * batch)

    with contextlib.suppress(ChildError):  # the agent ends with the client: its events are checked below
        agent.wait_events(lambda e: e["direction"] == "in", rounds * batch)
    summary = agent.stop()

    sent = sorted(r["seq"] for r in requests)
    out, inbound = agent.events_of("out"), agent.events_of("in")
    for direction, events in (("out", out), ("in", inbound)):
        measured = info_values(events, "udp_payload")
        assert sorted(measured) == sent, (
            f"{direction}: not measured "
            f"{[seq - SEQ_BASE for seq in sent if seq not in measured]} of 0..{len(sent) - 1}; "
            f"counters {summary['counters']}")
    rtt = {r["seq"]: r["rtt_ns"] for r in requests}
    egress = {info_int(e, "udp_payload"): e["latency_ns"] for e in out}
    ingress = {info_int(e, "udp_payload"): e["latency_ns"] for e in inbound}
    for first in sent[::batch]:
        # the datagrams of one call start when the call does and leave in order
        call = [egress[seq] for seq in range(first, first + batch)]
        assert call == sorted(call)
    assert all(egress[seq] + ingress[seq] < rtt[seq] for seq in sent)
    assert summary["out"]["count"] == summary["in"]["count"] == rounds * batch


# Runs in the pod's namespace: a client whose replies arrive while it waits inside recvmsg (a blocking
# socket, no timeout, as C clients read), so each reply is noted where the socket wakes it.
BLOCKING_CLIENT = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
seq = 0
while True:
    seq += 1
    sock.sendto(seq.to_bytes(8, "big") + bytes(56), (sys.argv[1], int(sys.argv[2])))
    sock.recvmsg(65535)
    time.sleep(0.02)
"""

# Runs in the node's namespace: a probe on the client until it measured 20 requests, removed (the node's
# last: the engine forgets what it learnt for its targets), then the same probe again.
AGAIN = """
import json, sys, time
from mace.grammar import parse
from mace_agent.engine import NodeEngine, ProbeSpec
text = sys.argv[1]
counts = []
with NodeEngine() as engine:
    for _ in range(2):
        probe = engine.add(ProbeSpec(parse(text)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and engine.snapshot(probe).counters["out_count"] < 20:
            engine.poll(0.1)
        counts.append({d: engine.snapshot(probe).counters[d + "_count"] for d in ("out", "in")})
        engine.remove(probe)
print(json.dumps(counts))
"""


def test_a_blocked_reader_is_measured_again_when_its_probe_comes_back(topology: Topology) -> None:
    """Removing a node's last probe clears what the programs learnt about the targets' sockets;
    the socket's notes may outlive that, and a probe added later on the same reader must still note
    the replies that wake it."""
    t = topology
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", str(PORT)).wait_ready()
    client = t.popen(t.pod.ns, [sys.executable, "-c", BLOCKING_CLIENT, t.remote.ipv4, str(PORT)])
    text = filter_text(t.uplink_ifindex, client.pid, ["udp_payload"], ["udp_payload"])
    out = t.run(t.node, [sys.executable, "-c", AGAIN, text], timeout=90)
    for counts in json.loads(out.strip().splitlines()[-1]):
        # every request measured has had its reply, bar the one in flight
        assert counts["out"] >= 20 and counts["in"] >= counts["out"] - 2, counts
