"""Faults during a run: the measured process exits, the outer device disappears, a flood exceeds the
rate limit, the duration ends. The agent never crashes: it exits cleanly with a summary whose counters
add up and whose stop reason says what happened."""

from __future__ import annotations

import signal
import time

import pytest

from mace_lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

PORT = 7001
SINK_PORT = 7002
FIELDS = ["icmp_seq"]


def assert_clean_exit(agent: AgentProcess, code: int, reason: str) -> None:
    """Exit code 0, no traceback, a summary with non-negative counters and the expected stop reason."""
    assert code == 0, agent.stderr()
    assert "Traceback" not in agent.stderr()
    summary = agent.summary
    assert summary is not None, agent.stderr()
    assert summary.get("stop_reason") == reason, summary
    for key in ("unmatched", "dropped"):
        assert isinstance(summary[key], int) and summary[key] >= 0, summary


def ping(t: Topology, *extra: str) -> Child:
    return Child(t, t.pod.ns, ["ping", "-4", "-n", "-i", "0.05", *extra, t.remote.ipv4], gated=True)


def test_measured_process_exits_mid_run(topology: Topology) -> None:
    t = topology
    count = 6
    pinger = ping(t, "-c", str(count))
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, pinger.pid, FIELDS, FIELDS))
    agent.wait_attached()
    pinger.release()
    assert pinger.wait_exit(30) == 0
    # The agent notices the process is gone and stops by itself, with everything measured until then.
    code = agent.wait_exit(30)
    assert_clean_exit(agent, code, "process_exited")
    assert agent.summary is not None
    assert agent.summary["out"]["count"] == count
    assert agent.summary["in"]["count"] == count


def test_outer_device_deleted_mid_run(topology: Topology) -> None:
    t = topology
    pinger = ping(t)
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, pinger.pid, FIELDS, FIELDS))
    agent.wait_attached()
    pinger.release()
    agent.wait_events(lambda e: e["direction"] == "in", 5)
    t.delete_link(t.node, t.remote.uplink)
    # Nothing more can be measured on that device: the agent stops by itself and says why.
    code = agent.wait_exit(30)
    assert_clean_exit(agent, code, "device_removed")
    assert pinger.running, "ping should still be running (its packets now have no route)"
    assert agent.summary is not None
    assert agent.summary["in"]["count"] >= 5


def test_flood_beyond_rate_limit_is_capped_and_counted(topology: Topology) -> None:
    t = topology
    limit, seconds = 200, 3.0
    TrafficProcess(t, t.remote.ns, "udp-server", "--bind", "::", "--port", str(PORT),
                   "--sink-port", str(SINK_PORT)).wait_ready()
    flood = TrafficProcess(t, t.pod.ns, "udp-flood", "--dest", t.remote.ipv4, "--port", str(SINK_PORT),
                           "--duration", str(seconds), gated=True)
    text = filter_text(t.uplink_ifindex, flood.pid, ["udp_payload"], ["udp_payload"])
    agent = AgentProcess(t, t.node, text, extra_args=["--rate-limit", str(limit)])
    agent.wait_attached()
    started = time.monotonic()
    flood.release()
    _, done = flood.wait_done(60)
    code = agent.wait_exit(30)  # the flood's end ends the run
    elapsed = time.monotonic() - started
    assert done["sent"] > 3 * limit * seconds, f"the flood was too slow to test the limit: {done}"
    assert_clean_exit(agent, code, "process_exited")
    summary = agent.summary
    assert summary is not None
    # At most `limit` events per started second of the run reach the stream ...
    assert agent.event_count <= limit * (int(elapsed) + 2), (agent.event_count, elapsed)
    # ... while the histograms still count every packet, and the capped ones are counted as such.
    assert summary["out"]["count"] > agent.event_count
    capped = summary["rate_limited"]
    assert isinstance(capped, int) and capped > 0, summary
    assert agent.event_count + capped >= summary["out"]["count"] - summary["dropped"], summary


def test_duration_ends_the_run_with_a_summary(topology: Topology) -> None:
    t = topology
    pinger = ping(t)
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, pinger.pid, FIELDS, FIELDS), duration=2)
    agent.wait_attached()
    pinger.release()
    code = agent.wait_exit(30)
    assert_clean_exit(agent, code, "duration")
    assert agent.summary is not None
    assert agent.summary["out"]["count"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_the_run_with_a_summary(topology: Topology, sig: signal.Signals) -> None:
    t = topology
    pinger = ping(t)
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, pinger.pid, FIELDS, FIELDS))
    agent.wait_attached()
    pinger.release()
    seen = agent.wait_events(lambda e: e["direction"] == "in", 3)
    agent.signal(sig)
    code = agent.wait_exit(30)
    assert_clean_exit(agent, code, "interrupted")
    assert agent.summary is not None
    assert agent.summary["in"]["count"] >= len(seen)


def test_packets_nobody_takes_expire_and_are_counted(topology: Topology) -> None:
    """The filter names a process that receives nothing: ping's replies reach the outer device (where
    the process is not yet known) and wait there for a receive call that never comes. Once older than
    the TTL they are counted as unmatched, exactly once each, and never as measured."""
    t = topology
    count, ttl_s, run_s = 8, 0.2, 3.0
    idle = Child(t, t.pod.ns, ["sleep", "60"])
    pinger = ping(t, "-c", str(count))
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, idle.pid, FIELDS, FIELDS), duration=run_s,
                         extra_args=["--ttl", str(ttl_s)])
    agent.wait_attached()
    pinger.release()
    assert pinger.wait_exit(30) == 0
    assert agent.running, "ping (about 0.4 s) should end well within the run; the machine is too slow"
    code = agent.wait_exit(30)
    assert_clean_exit(agent, code, "duration")
    summary = agent.summary
    assert summary is not None
    counters = summary["counters"]
    assert counters["in_inserted"] == count, counters
    assert counters["in_expired"] == count and counters["in_pending"] == 0, counters
    assert summary["in"]["count"] == 0 and summary["out"]["count"] == 0
    assert summary["unmatched"] == count, summary
