"""Engine settings: map sizes, output mode, rate limit, expiry."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mace_agent import layout

MAX_MAP_ENTRIES = 1 << 20
DEFAULT_MAX_PROBES = 1024
MAX_RINGBUF_PAGES = 4096
MAX_VXLAN_PORTS = 8
DEFAULT_VXLAN_PORTS = (4789, 8472)
"""IANA's VXLAN port, and Linux's default one (Flannel's)."""


@dataclass(frozen=True)
class EngineConfig:
    """How the node's engine sizes its state, and how a probe reports by default.

    map_entries: capacity of each pending-packet table (egress and ingress; 4-way set-associative),
        shared by every probe.
    max_probes: probe slots (each holds a probe's settings, counters and histograms).
    rate_limit: a probe's default: at most this many per-packet events per second to the stream
        (0: no limit); packets beyond it are still in the histograms and counted as ``rate_limited``.
    stream: a probe's default: send per-packet events to user space; histograms are kept either way.
    ttl_s: a pending packet not matched within this many seconds is expired and counted.
    udp_sockets: UDP sockets the targets read at once, each with notes of the datagrams queued on it
        (about 2 KiB each; the least recently read are forgotten first; other per-call
        state is task-local storage, one entry per thread of the process).
    ringbuf_pages: ring buffer size in pages (a power of two).
    exact_values: latencies per direction kept in user space for exact percentiles.
    vxlan_ports: UDP ports whose packets on the outer device are read as VXLAN, from the pod's
        packet they encapsulate (4789: IANA's; 8472: Linux's default, used by Flannel); empty:
        no overlay parsing.
    """

    map_entries: int = 4096
    max_probes: int = DEFAULT_MAX_PROBES
    rate_limit: int = 10_000
    stream: bool = True
    ttl_s: float = 2.0
    udp_sockets: int = 1024
    ringbuf_pages: int = 64
    exact_values: int = 100_000
    vxlan_ports: tuple[int, ...] = DEFAULT_VXLAN_PORTS

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when usable)."""
        problems = []
        if not 1 <= self.map_entries <= MAX_MAP_ENTRIES:
            problems.append(f"map entries must be between 1 and {MAX_MAP_ENTRIES}")
        if not 1 <= self.max_probes <= layout.MAX_PROBES:
            problems.append(f"max probes must be between 1 and {layout.MAX_PROBES}")
        if self.rate_limit < 0:
            problems.append("rate limit must be 0 (none) or positive")
        if not self.ttl_s > 0:
            problems.append("ttl must be positive")
        if not 1 <= self.udp_sockets <= MAX_MAP_ENTRIES:
            problems.append(f"UDP sockets must be between 1 and {MAX_MAP_ENTRIES}")
        pages = self.ringbuf_pages
        if not (1 <= pages <= MAX_RINGBUF_PAGES and pages & (pages - 1) == 0):
            problems.append(f"ring buffer pages must be a power of two up to {MAX_RINGBUF_PAGES}")
        if self.exact_values < 0:
            problems.append("exact values must be 0 or positive")
        if len(self.vxlan_ports) > MAX_VXLAN_PORTS or not all(0 < p < 65536 for p in self.vxlan_ports):
            problems.append(VXLAN_PORTS_RULE)
        return problems


VXLAN_PORTS_RULE = f"VXLAN ports must be at most {MAX_VXLAN_PORTS} ports between 1 and 65535"


def _vxlan_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ports: {text!r}") from None
    if EngineConfig(vxlan_ports=ports).problems():
        raise argparse.ArgumentTypeError(VXLAN_PORTS_RULE)
    return ports


def add_vxlan_ports_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--vxlan-ports PORT,...`` (comma-separated UDP ports, '' for none) to a command."""
    parser.add_argument("--vxlan-ports", type=_vxlan_ports, default=DEFAULT_VXLAN_PORTS, metavar="PORT,...",
                        help="UDP ports read as VXLAN on the outer device (default: "
                             f"{','.join(map(str, DEFAULT_VXLAN_PORTS))}; '' for none)")
