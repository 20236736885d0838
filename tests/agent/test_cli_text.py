"""``mace-agent run --format text``: a line per second that a person can watch (the last second's
latencies, then running totals), then a summary line."""

from __future__ import annotations

import re

import pytest
from pinging import ping_argv, replied_seqs

from mace_lab.processes import Child, agent_command, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

LIVE = re.compile(r"^\s*(\d+\.\d)s last 1s \| out: n=(\d+) p50=[\d.]+us .* \| in: n=(\d+) .*"
                  r"\| total out=(\d+) in=(\d+) unmatched=\d+ dropped=0 rate_limited=0$")
SUMMARY = re.compile(r"^summary \(duration\) \| out: n=(\d+) p50=([\d.]+)us .* \| in: n=(\d+) p50=([\d.]+)us")


def test_text_format_shows_each_second_then_a_summary(topology: Topology) -> None:
    t = topology
    ping = Child(t, t.pod.ns, ping_argv("ipv4", t.remote.ipv4, 40, interval="0.1"), gated=True)
    text = filter_text(t.uplink_ifindex, ping.pid, ["icmp_seq"], ["icmp_seq"])
    agent = Child(t, t.node, [agent_command(), "run", "--filter", text, "--format", "text",
                              "--duration", "3.5"])
    agent.wait_until(lambda: "attached" in agent.stderr(), 90, "the engine attached")
    ping.release()
    assert agent.wait_exit(60) == 0, agent.stderr()

    lines = [line for line in agent.snapshot() if isinstance(line, str)]
    live = [m for line in lines if (m := LIVE.match(line))]
    assert len(live) == 3, lines  # at 1, 2 and 3 s of a 3.5-s run
    assert [float(m.group(1)) for m in live] == pytest.approx([1.0, 2.0, 3.0], abs=0.3)
    # each line's last-second counts add up to its running totals (give or take a packet recorded
    # while the line's counters and histograms were being read)
    for direction, window, total in (("out", 2, 4), ("in", 3, 5)):
        running = 0
        for m in live:
            running += int(m.group(window))
            assert abs(int(m.group(total)) - running) <= 1, direction
    assert int(live[-1].group(4)) >= 20  # ping sends every 0.1 s
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, lines[-1]
    replies = len(replied_seqs(ping))
    assert int(summary.group(1)) >= int(live[-1].group(4)) and int(summary.group(3)) <= replies
    assert float(summary.group(2)) > 0 and float(summary.group(4)) > 0
