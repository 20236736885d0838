"""Probes whose targets overlap (a whole pod and one of its containers) measure at once on the node's
engine, each reporting its own targets' packets: the overlap's measurement is shared, not refused. A
probe added on a target that is already sending (another probe's target, with other fields) measures
that target's next sends: a sender's call state keeps a copy of its target's entry, and changing the
targets must renew it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mace_lab.processes import filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

IDS = (0x1101, 0x2202)

# Runs in the node's namespace: both probes on one engine, until each has seen what it can see.
BOTH = """
import json, sys, time
from mace.grammar import parse
from mace.probe import Scope
from mace_agent.engine import NodeEngine, ProbeSpec
text, first, second = json.loads(sys.argv[1])
with NodeEngine() as engine:
    whole = engine.add(ProbeSpec(parse(text), Scope.cgroup, pids=(first, second)))
    one = engine.add(ProbeSpec(parse(text), Scope.cgroup, pids=(second,)))
    seen = {"whole": set(), "one": set()}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (len(seen["whole"]) < 2 or len(seen["one"]) < 1
                                           or engine.snapshot(one).counters["in_count"] < 10):
        engine.poll(0.1)
        for name, probe in (("whole", whole), ("one", one)):
            seen[name] |= {event.info["icmp_id"] for event in probe.take_events()}
    counts = {name: {d: engine.snapshot(p).counters[d + "_count"] for d in ("out", "in")}
              for name, p in (("whole", whole), ("one", one))}
    print(json.dumps({"seen": {k: sorted(v) for k, v in seen.items()}, "counts": counts,
                      "targets": [len(whole.target_keys), len(one.target_keys)]}))
"""


def test_a_pod_probe_and_a_container_probe_with_the_same_fields_measure_at_once(
        topology: Topology, make_cgroup: Callable[[str], Path]) -> None:
    t = topology
    pingers = []
    for ident, name in zip(IDS, ("first", "second"), strict=True):
        ping = t.popen(t.pod.ns, ["ping", "-n", "-i", "0.05", "-e", str(ident), t.remote.ipv4])
        pingers.append(ping)
        (make_cgroup(name) / "cgroup.procs").write_text(str(ping.pid))
    text = filter_text(t.uplink_ifindex, pingers[0].pid, ["icmp_id", "icmp_seq"], ["icmp_id", "icmp_seq"])
    out = t.run(t.node, [sys.executable, "-c", BOTH, json.dumps([text, pingers[0].pid, pingers[1].pid])],
                timeout=90)
    result = json.loads(out.strip().splitlines()[-1])
    # ping -e sets the id field as given; the field catalogue reads it in network order
    either = [{i, int.from_bytes(i.to_bytes(2, "big"), "little")} for i in IDS]
    whole, one = set(result["seen"]["whole"]), set(result["seen"]["one"])
    assert result["targets"] == [2, 1], result
    assert len(whole) == 2 and all(whole & ids for ids in either), result
    assert one and one <= either[1], result
    for direction in ("out", "in"):
        assert result["counts"]["one"][direction] >= 10, result
        assert result["counts"]["whole"][direction] > result["counts"]["one"][direction], result


# Runs in the node's namespace: one probe on a pinging process, then, once it measures, a second one on
# the same process with other fields; each counts what it measured after the second was added.
LATER = """
import json, sys, time
from mace.grammar import parse
from mace_agent.engine import NodeEngine, ProbeSpec
first_text, second_text = json.loads(sys.argv[1])
with NodeEngine() as engine:
    first = engine.add(ProbeSpec(parse(first_text)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and engine.snapshot(first).counters["out_count"] < 5:
        engine.poll(0.1)
    base = engine.snapshot(first).counters["out_count"]
    second = engine.add(ProbeSpec(parse(second_text)))
    while time.monotonic() < deadline and engine.snapshot(second).counters["out_count"] < 10:
        engine.poll(0.1)
    print(json.dumps({"first": engine.snapshot(first).counters["out_count"] - base,
                      "second": {d: engine.snapshot(second).counters[d + "_count"] for d in ("out", "in")}}))
"""


def test_a_probe_added_on_a_sending_target_measures_its_next_sends(topology: Topology) -> None:
    t = topology
    ping = t.popen(t.pod.ns, ["ping", "-n", "-i", "0.05", t.remote.ipv4])
    first = filter_text(t.uplink_ifindex, ping.pid, ["icmp_id", "icmp_seq"], ["icmp_seq"])
    second = filter_text(t.uplink_ifindex, ping.pid, ["icmp_seq", "ip_id"], ["ip_id"])
    out = t.run(t.node, [sys.executable, "-c", LATER, json.dumps([first, second])], timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["second"]["out"] >= 10 and result["second"]["in"] >= 5, result
    assert result["first"] >= 10, result  # the first probe kept measuring meanwhile
