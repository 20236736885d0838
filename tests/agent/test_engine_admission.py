"""Ingress admission (mace.c's ``rx_admitted``): the outer device keeps a packet for the targets only if a
target may read it. A pod's other sockets cost no insert; every packet a target reads is still measured:
on a socket it had before its probe started (read from an event loop, which waits before reading), on one
it binds later, and through a DNAT from the node's own address (as a NodePort does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mace_lab.processes import Child, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 20
EARLY, OTHER, LATE, NODE_PORT = 7401, 7402, 7403, 7404

# Runs in the node's namespace: probes on two servers of the pod, then counts until both measured all.
ADMISSION = """
import json, sys, time
from mace.grammar import parse
from mace_agent.engine import NodeEngine, ProbeSpec

early_text, late_text, count = json.loads(sys.argv[1])
with NodeEngine() as engine:
    early, late = engine.add(ProbeSpec(parse(early_text))), engine.add(ProbeSpec(parse(late_text)))
    print(json.dumps({"ready": True}), flush=True)
    counters = lambda probe: engine.snapshot(probe).counters
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (counters(early)["in_count"] >= 2 * count
                                               and counters(late)["in_count"] >= count):
        engine.poll(0.1)
    print(json.dumps({name: {k: counters(p)[k] for k in ("in_count", "out_count", "in_inserted")}
                      for name, p in (("early", early), ("late", late))}))
"""


def udp_client(t: Topology, dest: str, port: int, seq_base: int) -> None:
    client = TrafficProcess(t, t.remote.ns, "udp-client", "--dest", dest, "--port", str(port),
                            "--count", str(COUNT), "--rate", "100", "--seq-base", str(seq_base))
    _records, done = client.wait_done()
    assert done == {"sent": COUNT, "received": COUNT}


def test_only_packets_a_target_may_read_are_kept_and_all_of_those_are_measured(topology: Topology) -> None:
    t = topology
    early = TrafficProcess(t, t.pod.ns, "udp-server", "--bind", "0.0.0.0", "--port", str(EARLY))
    early.wait_ready()  # bound before its probe starts: the agent finds its socket
    other = TrafficProcess(t, t.pod.ns, "udp-server", "--bind", "0.0.0.0", "--port", str(OTHER))
    other.wait_ready()  # the pod's, but no probe names it
    late = TrafficProcess(t, t.pod.ns, "udp-server", "--bind", "0.0.0.0", "--port", str(LATE), gated=True)
    dnat = ["-t", "nat", "-A", "PREROUTING", "-i", t.remote.uplink, "-p", "udp", "--dport", str(NODE_PORT),
            "-j", "DNAT", "--to-destination", f"{t.pod.ipv4}:{EARLY}"]
    subprocess.run(["ip", "netns", "exec", t.node, "iptables", *dnat], check=True, timeout=20)
    texts = [filter_text(t.uplink_ifindex, server.pid, ["udp_payload"], ["udp_dst_port"])
             for server in (early, late)]
    script = Child(t, t.node, [sys.executable, "-c", ADMISSION, json.dumps([*texts, COUNT])])
    script.wait_until(lambda: {"ready": True} in script.lines, 60, "the probes added")
    late.release()
    late.wait_ready()  # bound while its probe measures: the program learns the port at bind

    udp_client(t, t.pod.ipv4, OTHER, 1 << 20)  # first: all of it is in before the others are counted
    udp_client(t, t.pod.ipv4, EARLY, 2 << 20)
    udp_client(t, t.pod.ipv4, LATE, 3 << 20)
    udp_client(t, t.remote.node_ipv4, NODE_PORT, 4 << 20)  # DNAT'd to the early server
    assert script.wait_exit(90) == 0, script.stderr()
    result = script.lines[-1]

    assert result["early"]["in_count"] == 2 * COUNT, result  # the first datagram of each client too
    assert result["early"]["out_count"] == 2 * COUNT, result
    assert result["late"]["in_count"] == COUNT, result
    # Both probes use one flow spec on one device, so they share its insert counter: the datagrams to
    # the other server were never inserted.
    assert result["early"]["in_inserted"] == 3 * COUNT, result
