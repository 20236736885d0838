"""iputils ping as the engine suites run it: its command line and the replies it printed."""

from __future__ import annotations

import re

from mace_lab.processes import Child


def ping_argv(family: str, dest: str, count: int, interval: str = "0.05") -> list[str]:
    """``ping`` sending ``count`` echo requests to ``dest`` (family ``ipv4`` or ``ipv6``)."""
    return ["ping", "-4" if family == "ipv4" else "-6", "-n", "-i", interval, "-c", str(count), dest]


def replied_seqs(ping: Child) -> list[int]:
    """The icmp_seq values of the replies ping printed."""
    return [int(m.group(1)) for line in ping.snapshot()
            if isinstance(line, str) and (m := re.search(r"icmp_seq=(\d+)", line))]
