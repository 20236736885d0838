"""``mace demo``: measure a pinging pod on a throwaway node built from network namespaces.

Builds a node namespace (bridge + outer device ``uplink0``), a pod behind the bridge and a remote host
behind the outer device, pings the remote from the pod, runs ``mace-agent run`` in the node namespace
with a filter naming ping's PID and the outer device, shows each packet's egress and ingress latency
as it is measured, prints a summary and removes everything it made (also on Ctrl-C and on errors).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import sys
import time
from types import FrameType
from typing import Any, TextIO

from mace_lab.processes import AgentProcess, Child, ChildError, filter_text
from mace_lab.topology import Topology, TopologyError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PING_INTERVAL_S = 0.2
RTT_WAIT_S = 0.3
"""How long a finished row waits for ping's own line (with its RTT) before it is shown without it."""

_PING_LINE = re.compile(r"icmp_seq=(\d+).*time=([\d.]+) ms")


def _us(ns: float) -> str:
    return f"{ns / 1000:8.1f} us"


def _ping_rtts(ping: Child) -> dict[int, float]:
    """ping's own RTT per icmp_seq, in ns, from the lines it printed."""
    rtts: dict[int, float] = {}
    for line in ping.snapshot():
        if isinstance(line, str) and (match := _PING_LINE.search(line)):
            rtts[int(match.group(1))] = float(match.group(2)) * 1e6
    return rtts


class _Rows:
    """Pairs each echo's egress and ingress events into one printed row."""

    def __init__(self, out: TextIO, ping: Child) -> None:
        self.out = out
        self.ping = ping
        self.partial: dict[int, dict[str, Any]] = {}
        self.done: dict[int, tuple[dict[str, Any], float]] = {}

    def header(self) -> None:
        self.out.write(f"\n  {'icmp_seq':>8}  {'egress':>11}  {'ingress':>11}  {'ping RTT':>11}\n")
        self.out.write(f"  {'':>8}  {'(sendto ->':>11}  {'(uplink0 ->':>11}  {'(to its rx':>11}\n")
        self.out.write(f"  {'':>8}  {'uplink0)':>11}  {'recvmsg)':>11}  {'timestamp)':>11}\n")
        self.out.flush()

    def add(self, event: dict[str, Any]) -> None:
        seq = event["info"].get("icmp_seq")
        if not isinstance(seq, int):
            return
        row = self.partial.setdefault(seq, {})
        row[event["direction"]] = event["latency_ns"]
        if "out" in row and "in" in row:
            self.done[seq] = (self.partial.pop(seq), time.monotonic() + RTT_WAIT_S)
        if len(self.partial) > 1000:  # bounded: echoes whose other half never came
            self.partial.pop(min(self.partial))

    def flush(self, final: bool = False) -> None:
        rtts = _ping_rtts(self.ping)
        now = time.monotonic()
        for seq in sorted(self.done):
            row, deadline = self.done[seq]
            if seq not in rtts and now < deadline and not final:
                continue
            rtt = _us(rtts[seq]) if seq in rtts else f"{'-':>11}"
            self.out.write(f"  {seq:>8}  {_us(row['out'])}  {_us(row['in'])}  {rtt}\n")
            del self.done[seq]
        self.out.flush()


def _summary(out: TextIO, summary: dict[str, Any], ping: Child, elapsed: float) -> None:
    out.write(f"\nSummary after {elapsed:.1f} s (stopped: {summary.get('stop_reason', '?')})\n")
    out.write(f"  {'':9}{'packets':>8}  {'p50':>11}  {'p90':>11}  {'p99':>11}  {'max':>11}\n")
    for direction, name in (("out", "egress"), ("in", "ingress")):
        s = summary[direction]
        out.write(f"  {name:9}{s['count']:>8}  {_us(s['p50_ns'])}  {_us(s['p90_ns'])}  {_us(s['p99_ns'])}"
                  f"  {_us(s['max_ns'])}\n")
    out.write(f"  unmatched {summary.get('unmatched', 0)}, dropped {summary.get('dropped', 0)}, "
              f"rate-limited {summary.get('rate_limited', 0)}\n")
    rtts = list(_ping_rtts(ping).values())
    if rtts:
        median = _us(statistics.median(rtts)).strip()
        out.write(f"  ping's own RTT: median {median} over {len(rtts)} replies\n")
    out.write("Egress runs from ping's sendto() to the request's transmission on uplink0; ingress from the\n"
              "reply's arrival on uplink0 to ping's recvmsg() returning it. ping's own RTT ends at the\n"
              "kernel's receive timestamp of the reply, before ping wakes up to read it.\n")
    out.flush()


def _measure(topology: Topology, duration: float, stream: bool, out: TextIO) -> int:
    pod, remote = topology.pod, topology.remote
    out.write(f"Built a throwaway node in network namespaces {topology.prefix}-*:\n"
              f"  pod     {pod.ns:<28} {pod.ipv4}  (eth0 -> veth -> bridge br0 in the node)\n"
              f"  node    {topology.node:<28} outer device uplink0 (ifindex {remote.uplink_ifindex})\n"
              f"  remote  {remote.ns:<28} {remote.ipv4}\n")
    ping = Child(topology, pod.ns, ["ping", "-4", "-n", "-i", str(PING_INTERVAL_S), remote.ipv4], gated=True)
    text = filter_text(remote.uplink_ifindex, ping.pid, ["icmp_id", "icmp_seq"], ["icmp_seq"])
    out.write(f"Filter: {text}\nAttaching the engine (compiling the eBPF program) ...\n")
    out.flush()
    agent = AgentProcess(topology, topology.node, text, duration=duration,
                         extra_args=() if stream else ("--no-stream",))
    began = time.monotonic()
    try:
        agent.wait_attached()
        ping.release()
        began = time.monotonic()
        mode = "" if stream else " with in-kernel histograms only (no per-packet events)"
        out.write(f"Attached. Pinging {remote.ipv4} from the pod (PID {ping.pid}) every {PING_INTERVAL_S} s; "
                  f"measuring for {duration:g} s{mode}. Ctrl-C stops early.\n")
        rows = _Rows(out, ping)
        if stream:
            rows.header()
        seen = 0
        while True:
            new = agent.wait_new_events(seen, 0.1)
            seen += len(new)
            for event in new:
                rows.add(event)
            rows.flush()
            if not new and not agent.running:
                break
        agent.wait_exit(30)
        rows.flush(final=True)
    except KeyboardInterrupt:
        agent.signal(signal.SIGINT)  # the terminal usually sent it already; make sure
        agent.wait_exit(30)
        if agent.summary is not None:
            _summary(out, agent.summary, ping, time.monotonic() - began)
        return EXIT_INTERRUPTED
    if agent.summary is None:
        raise ChildError(f"the engine ended without a summary: {agent.stderr()}")
    _summary(out, agent.summary, ping, time.monotonic() - began)
    return EXIT_OK


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(duration: float, stream: bool, out: TextIO | None = None) -> int:
    """Run the demo for ``duration`` seconds; per-packet lines when ``stream``. Returns an exit code."""
    out = out if out is not None else sys.stdout
    if os.geteuid() != 0:
        print("mace demo: needs root (it creates network namespaces and loads eBPF programs)",
              file=sys.stderr)
        return EXIT_USAGE
    if not 0 < duration <= 3600:
        print("mace demo: --duration must be between 0 and 3600 seconds", file=sys.stderr)
        return EXIT_USAGE
    # Ctrl-C and SIGTERM stop the run and clean up, even where SIGINT was inherited as ignored (a
    # shell's background job, a CI runner), in which case Python would leave it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    prefix = f"mace-demo-{os.getpid()}"
    code = EXIT_FAILED
    try:
        with Topology(prefix=prefix) as topology:
            code = _measure(topology, duration, stream, out)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except (TopologyError, ChildError, OSError) as error:
        print(f"mace demo: {error}", file=sys.stderr)
        code = EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out.write(f"Removed the namespaces {prefix}-* and everything in them.\n")
    out.flush()
    return code
