"""Through a VXLAN overlay the outer device carries only encapsulated pod packets: the engine reads
them from the headers they encapsulate (the ICMP, UDP and TCP suites measure through an overlay too),
on the configured VXLAN ports only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pinging import ping_argv

from mace_lab.processes import AgentProcess, Child, filter_text
from mace_lab.topology import Topology

pytestmark = pytest.mark.ebpf

COUNT = 10


@pytest.mark.parametrize("ports", ["", "8472"])
def test_vxlan_packets_on_other_ports_are_not_read_as_overlay(make_topology: Callable[..., Topology],
                                                              ports: str) -> None:
    """With VXLAN parsing off, or on other ports, the outer device shows the engine only UDP tunnel
    packets, which an ICMP filter never matches: nothing is measured, and nothing goes wrong."""
    t = make_topology(vxlan_port=4789)
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
