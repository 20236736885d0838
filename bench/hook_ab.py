"""Two builds of the engine, before and after a change, timed program by program under the same traffic.

The RTT and flood benches compare configurations, and on a machine whose speed drifts by 30-50% from
minute to minute their figures for one build vary as much as a change of a few helper calls. This bench
holds everything but the build fixed: one stream of traffic runs throughout, and each build's engine
is attached in turn for a window of ``--seconds``, in rounds, with ``kernel.bpf_stats_enabled=1``
(restored after). The traffic (``--traffic``):

    flood  throughput.py's UDP flood (64-byte datagrams) in one direction of the lab, with a probe
           that matches it (egress: the flood's process; ingress: the pod's receiver); the maps and
           programs stay in the caches
    rr     rtt_overhead.py's UDP request/response client (bench/udp_rr.c) in the pod at ``--rate``
           round trips per second against its echo server, with a probe on the client: each hook
           runs with the caches as a sparse workload leaves them, as in the RTT bench

A build is a git revision, checked out in a temporary worktree, or ``.``, this checkout's working
tree. Each build is loaded ``--instances`` times, and the loads take their windows in a fresh random
order each round (``--seed``): two loads of one build differ by up to about 20 ns per run in some
programs (most likely where their maps and programs land in memory), so a difference that holds
across the loads is the build's. Per program and load: the median ns per run over rounds (with the
range), and runs per received packet; per load, the median time in all programs per datagram sent
(flood: per call of the flood's ``sendto``, since the received rate depends on how many the receiver
drops, the sent one on the sender's cost) or per round trip (rr: per reply the client got), counted
while every program is attached.

Run: sudo .venv/bin/python bench/hook_ab.py BEFORE [AFTER] [--traffic flood|rr]
         [--direction egress|ingress] [--rate R] [--rounds N] [--seconds S] [--instances K] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import (
    REPO,
    RESULTS,
    BpfStats,
    HookControl,
    Record,
    Samples,
    machine,
    median,
    program_cost,
    require_root,
    udp_rr_binary,
    udp_rr_server,
    write_results,
)
from rtt_overhead import PORT as RR_PORT
from rtt_overhead import parse_udp
from throughput import ECHO_PORT, FIELDS, GUARD_S, SINK_PORT, sample

from mace_lab.processes import TrafficProcess, filter_text
from mace_lab.topology import Topology

WORKING_TREE = "."
SEND_CALLS = "tracepoint__syscalls__sys_enter_sendto"
"""The program that runs once per datagram the flood sends."""


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[dict[str, str] | None]:
    """The environment that makes hookctl import the engine of ``revision`` (None: this checkout's)."""
    if revision == WORKING_TREE:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mace-ab-") as parent:
        tree = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision],
                       check=True, capture_output=True)
        try:
            # the installed package maps mace_agent.bpf to this checkout's agent/bpf: point it at the tree's
            (tree / "agent" / "mace_agent" / "bpf").symlink_to(tree / "agent" / "bpf")
            path = os.pathsep.join(str(tree / part) for part in ("agent", ".", "operator"))
            yield os.environ | {"PYTHONPATH": path}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


class Flood:
    """throughput.py's flood in one direction; the probe names its sender (egress) or its sink."""

    def __init__(self, t: Topology, egress: bool, duration: float) -> None:
        self.sink_ns, flood_ns, sink_addr = ((t.remote.ns, t.pod.ns, t.remote.ipv4) if egress
                                             else (t.pod.ns, t.remote.ns, t.pod.ipv4))
        self.sink = TrafficProcess(t, self.sink_ns, "udp-server", "--bind", "0.0.0.0", "--port",
                                   str(ECHO_PORT), "--sink-port", str(SINK_PORT))
        self.sink.wait_ready()
        self.flood = TrafficProcess(t, flood_ns, "udp-flood", "--dest", sink_addr, "--port",
                                    str(SINK_PORT), "--duration", f"{duration:.0f}")
        self.filter = filter_text(t.uplink_ifindex, self.flood.pid if egress else self.sink.pid,
                                  FIELDS, FIELDS)

    def mark(self) -> int:
        """The receiving eth0's packet count now."""
        return int(sample(self.sink_ns, "eth0", False, [])["rx_packets"])

    def units(self, first: int, last: int, programs: dict[str, Record]) -> tuple[int, int]:
        """(packets received, datagrams sent) between two marks."""
        return last - first, int(programs.get(SEND_CALLS, {}).get("runs", 0))

    def close(self) -> None:
        self.flood.kill()
        self.sink.kill()


class RequestResponse:
    """udp_rr's client in the pod at ``rate`` round trips/s; the probe names the client."""

    def __init__(self, t: Topology, rate: float) -> None:
        self.server = udp_rr_server(t, t.remote.ns, RR_PORT)
        argv = [str(udp_rr_binary()), "client", t.remote.ipv4, str(RR_PORT), f"{rate:g}"]
        self.client = Samples(t, t.pod.ns, argv, parse_udp)
        self.filter = filter_text(t.uplink_ifindex, self.client.pid, ["udp_payload"], ["udp_payload"])

    def mark(self) -> int:
        """The time now (the client's samples carry their send times)."""
        return time.monotonic_ns()

    def units(self, first: int, last: int, programs: dict[str, Record]) -> tuple[int, int]:
        """(replies the client got, the same) between two marks."""
        replies = sum(1 for _, rtt in self.client.between(first, last) if rtt >= 0)
        return replies, replies

    def close(self) -> None:
        self.client.kill()
        self.server.kill()


def run(t: Topology, builds: dict[str, dict[str, str] | None], args: argparse.Namespace) -> Record:
    """Alternate every load of every build around one stream of traffic; return per-window costs."""
    loads = [(build, i) for build in builds for i in range(args.instances)]
    duration = 120 + len(loads) * (60 + args.rounds * (args.seconds + 2))
    traffic: Flood | RequestResponse = (Flood(t, args.direction == "egress", duration)
                                        if args.traffic == "flood" else RequestResponse(t, args.rate))
    text = traffic.filter
    controls = {}
    for build, i in loads:
        control = controls[build, i] = HookControl(t, t.node, env=builds[build])
        control.request("load", name="engine", kind="engine", filter=text)
    windows: dict[str, list[Record]] = {f"{build}#{i}": [] for build, i in loads}
    try:
        with BpfStats():
            rng = random.Random(args.seed)
            for _ in range(args.rounds):
                order = list(controls.items())
                rng.shuffle(order)  # a fresh order each round: no load always follows the same one
                for (build, i), control in order:
                    control.attach("engine", False)
                    time.sleep(GUARD_S)  # let the queues settle after attaching; not counted
                    before = control.request("stats", name="engine")
                    first = traffic.mark()
                    time.sleep(args.seconds)  # the measurement window itself: every program attached
                    last = traffic.mark()
                    cost = program_cost(before, control.request("stats", name="engine"))
                    control.request("detach", name="engine")
                    packets, units = traffic.units(first, last, cost)
                    windows[f"{build}#{i}"].append({"packets": packets, "units": units, "programs": cost})
    finally:
        for control in controls.values():
            control.close()
        traffic.close()
    return {"traffic": args.traffic, "direction": args.direction, "rounds": args.rounds,
            "seconds": args.seconds, "loads": windows}


def summarise(loads: dict[str, list[Record]]) -> dict[str, Record]:
    """Per load: median ns per run and its range, and runs per received packet, for each program that ran."""
    found: dict[str, Record] = {}
    for load, windows in loads.items():
        programs: Record = {}
        names = {name for w in windows for name, c in w["programs"].items() if c["runs"]}
        for name in sorted(names):
            per_run = [w["programs"][name]["ns_per_run"] for w in windows if w["programs"][name]["runs"]]
            runs = sum(w["programs"][name]["runs"] for w in windows)
            packets = sum(w["packets"] for w in windows)
            programs[name] = {"ns_per_run": median(per_run), "min": min(per_run), "max": max(per_run),
                              "runs_per_packet": round(runs / packets, 2) if packets else None}
        per_unit = [sum(c["ns"] for c in w["programs"].values()) / w["units"] for w in windows if w["units"]]
        found[load] = {"programs": programs, "ns_per_unit": round(median(per_unit)) if per_unit else None}
    return found


def report(summary: dict[str, Record], traffic: str) -> list[str]:
    """The table: a row per program, a column per load."""
    loads = list(summary)
    names = sorted({name for s in summary.values() for name in s["programs"]})
    short = {name: name.removeprefix("raw_tracepoint__").removeprefix("tracepoint__syscalls__")
             for name in names}
    lines = [f"{'ns per run: median (min-max), runs/packet':44s}" + "".join(f"{load:>26s}" for load in loads)]
    for name in names:
        cells = []
        for load in loads:
            p = summary[load]["programs"].get(name)
            cells.append(f"{p['ns_per_run']:.0f} ({p['min']:.0f}-{p['max']:.0f}) x{p['runs_per_packet']}"
                         if p else "-")
        lines.append(f"{short[name]:44s}" + "".join(f"{c:>26s}" for c in cells))
    unit = "datagram sent" if traffic == "flood" else "round trip"
    lines.append(f"{f'in programs per {unit} (median)':44s}"
                 + "".join(f"{str(summary[load]['ns_per_unit']) + ' ns':>26s}" for load in loads))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="git revision of the first build ('.': the working tree)")
    parser.add_argument("after", nargs="?", default=WORKING_TREE, help="the second build (default: '.')")
    parser.add_argument("--traffic", choices=("flood", "rr"), default="flood")
    parser.add_argument("--direction", choices=("egress", "ingress"), default="egress",
                        help="the flood's direction")
    parser.add_argument("--rate", type=float, default=1000.0, help="round trips per second (rr)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    parser.add_argument("--instances", type=int, default=2, help="loads of each build")
    parser.add_argument("--seed", type=int, default=1, help="seed of the windows' order")
    parser.add_argument("--out", type=Path, default=RESULTS / "hook_ab.json")
    args = parser.parse_args()
    require_root()
    began = time.monotonic()
    with checkout(args.before) as before_env, checkout(args.after) as after_env:
        builds = {args.before: before_env, args.after: after_env}
        with Topology(prefix="mace-ab") as t:
            raw = run(t, builds, args)
    summary = summarise(raw["loads"])
    for line in report(summary, args.traffic):
        print(line)
    write_results("hook_ab", args.out, machine(), began, {"raw": raw, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
