"""The call gates (mace.c's ``call_gates``) open for a target's calls and close again after them, also
when a target is killed while it waits in a receive call: a gate left open would make every process on
the node pay a task-storage lookup in the hooks it guards, one left shut would lose the target's
samples."""

from __future__ import annotations

import json
import sys

import pytest

from mace_lab.processes import Child, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

PORT = 7301
ROUNDS = 40

# Runs in the node's namespace: two probes on one engine (it says when they are in), then each target
# ends (the UDP client after its requests, ping killed by SIGKILL in its wait) and the gates are read.
GATES = """
import json, os, signal, sys, time
from mace.grammar import parse
from mace_agent.engine import NodeEngine, ProbeSpec

udp_text, ping_text, udp_pid, ping_pid = json.loads(sys.argv[1])

def gates(engine):  # per gate: the threads counted in all, and in all slots
    table = engine.bpf[b"call_gates"]
    return [[table[table.Key(i)].total, sum(table[table.Key(i)].n)] for i in range(2)]

def ended(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True

def measured(engine, probe, least):
    counters = engine.snapshot(probe).counters
    return counters["out_count"] >= least and counters["in_count"] >= least

with NodeEngine() as engine:
    before = gates(engine)
    udp = engine.add(ProbeSpec(parse(udp_text)))
    ping = engine.add(ProbeSpec(parse(ping_text)))
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (measured(engine, udp, 10) and measured(engine, ping, 5)):
        engine.poll(0.1)
    os.kill(ping_pid, signal.SIGKILL)
    while time.monotonic() < deadline and not (ended(ping_pid) and ended(udp_pid)):
        engine.poll(0.1)
    counts = {name: {d: engine.snapshot(p).counters[d + "_count"] for d in ("out", "in")}
              for name, p in (("udp", udp), ("ping", ping))}
    print(json.dumps({"before": before, "after": gates(engine), "counts": counts,
                      "ended": [ended(udp_pid), ended(ping_pid)]}))
"""


def test_call_gates_close_after_the_targets_calls(topology: Topology) -> None:
    t = topology
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "0.0.0.0", "--port", str(PORT)).wait_ready()
    udp = TrafficProcess(t, t.pod.ns, "udp-client", "--dest", t.remote.ipv4, "--port", str(PORT),
                         "--count", str(ROUNDS), "--rate", "10", gated=True)
    ping = t.popen(t.pod.ns, ["ping", "-n", "-i", "0.2", t.remote.ipv4])
    udp_text = filter_text(t.uplink_ifindex, udp.pid, ["udp_payload"], ["udp_payload"])
    ping_text = filter_text(t.uplink_ifindex, ping.pid, ["icmp_id", "icmp_seq"], ["icmp_seq"])
    script = Child(t, t.node, [sys.executable, "-c", GATES,
                               json.dumps([udp_text, ping_text, udp.pid, ping.pid])])
    script.wait_until(lambda: {"ready": True} in script.lines, 60, "the probes added")
    udp.release()
    assert script.wait_exit(90) == 0, script.stderr()
    result = script.lines[-1]
    assert result["ended"] == [True, True], result
    assert result["counts"]["udp"]["out"] >= 10 and result["counts"]["udp"]["in"] >= 10, result
    assert result["counts"]["ping"]["out"] >= 5 and result["counts"]["ping"]["in"] >= 5, result
    assert result["before"] == [[0, 0], [0, 0]], result
    assert result["after"] == [[0, 0], [0, 0]], result
