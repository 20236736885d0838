"""How much the engine's hooks add to a request/response round trip.

Workloads, in a pod namespace talking to a remote namespace through the node's uplink (lab
topology): a UDP request/response client (bench/udp_rr.c: sendto, then recvmsg) against its echo
server, and iputils ping (raw ICMP socket), each at 1000 and at 5 probes/s. Both are C, so their own
jitter stays below the microseconds measured. One client process per workload runs
throughout; the configurations alternate around it in rounds, in a fresh random order each round:

    none          no programs attached
    empty         programs that return 0, on every hook the engine uses for this filter
    nonmatch      the engine, filter naming another process (an idle one in the same pod)
    match-stream  the engine, filter naming the client, per-packet event stream on
    match-hist    the same engine, histograms only (no per-packet crossing to user space)
    tcpdump       no programs; two packet captures in the node namespace, ``tcpdump -i DEV -w /dev/null
                  -U -n`` on the outer device and on the pod's host-side veth: the way people measure
                  this by hand, the peer a user would pick instead, so each figure also reads against it

Programs are compiled once per workload by bench/hookctl.py in the node namespace and attached
and detached between windows; a window starts 0.1 s after attaching. The captures are started
for each of their windows (the window starts 0.1 s after both print "listening on") and ended by PID
after it; their closing counts are kept (received by the filter: what the kernel copied into
their rings; captured: what tcpdump read, usually 0 in windows under a second, as tcpdump without
--immediate-mode wakes for a ring block only when it fills or after 1 s). For each round and
configuration the median RTT of the probes sent in its window is compared with the same round's
no-agent window; the figure is the median of these paired differences over rounds, with a 95%
bootstrap interval. A final phase at 1000 probes/s, with kernel.bpf_stats_enabled=1 (restored
after), reads each program's run count and run time to show where the cost is. --experiment adds
the empty programs split into the system-call tracepoints and the other (raw) tracepoints, empty
raw tracepoints on every system call in place of the system-call tracepoints (empty-rawsys), and
bench/least_work.c, the least work that measures the client's round trips (a bound, not a design),
naming the client (least-work) or the idle process (least-work-nonmatch); --configs runs only the
configurations it names (and none). Without tcpdump installed, its configuration is skipped with a
message.

Run: sudo .venv/bin/python bench/rtt_overhead.py [--rounds N] [--workloads udp,ping] [--rates 1000,5]
     [--experiment | --configs empty-syscalls,empty-rawsys,...]
"""

from __future__ import annotations

import argparse
import bisect
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    IMAGES,
    RESULTS,
    BpfStats,
    Estimate,
    HookControl,
    PlotRow,
    Record,
    Samples,
    idle_process,
    machine,
    median,
    program_cost,
    quantile,
    require_root,
    svg_intervals,
    tracing_programs,
    udp_rr_binary,
    udp_rr_server,
    write_results,
)

from mace_lab.processes import Child, filter_text
from mace_lab.topology import Topology

CONFIGS = ("none", "empty", "nonmatch", "match-stream", "match-hist", "tcpdump")
PEERS = ("tcpdump",)
"""Configurations that are other tools, not program sets of hookctl."""
EXPERIMENTS = ("empty-syscalls", "empty-net", "empty-rawsys", "least-work", "least-work-nonmatch")
PROGRAMS = {
    # configuration: (program set, hookctl kind, whose PID the filter names, stream on)
    "empty": ("empty", "empty", "client", False),
    "nonmatch": ("nonmatch", "engine", "idle", False),
    "match-stream": ("match", "engine", "client", True),
    "match-hist": ("match", "engine", "client", False),
    "empty-syscalls": ("empty-syscalls", "empty-syscalls", "client", False),
    "empty-net": ("empty-net", "empty-net", "client", False),
    "empty-rawsys": ("empty-rawsys", "empty-rawsys", "client", False),
    "least-work": ("least-work", "least-work", "client", False),
    "least-work-nonmatch": ("least-work-idle", "least-work", "idle", False),
}
PORT = 7101
GUARD_S = 0.1
LOST = -1
TARGET_US = {1000.0: 3.0, 5.0: 5.0}
CAPTURE_READY_S = 30.0
_CAPTURE_STATS = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)$")
FIELDS = {"udp": ["udp_payload"], "ping": ["icmp_seq"]}
_PING_LINE = re.compile(r"^\[(\d+)\.(\d+)\].*icmp_seq=\d+.* time=([\d.]+) ms")


@dataclass(frozen=True)
class Series:
    """One workload at one probe rate."""

    workload: str
    rate: float
    rounds: int
    seconds: float
    configs: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.workload}@{self.rate:g}/s"


def parse_udp(item: Any) -> tuple[int, int] | None:
    """(send_start_ns, rtt_ns or LOST) of one udp-client line."""
    if isinstance(item, dict) and "seq" in item:
        return int(item["send_start_ns"]), int(item.get("rtt_ns", LOST))
    return None


def parse_ping(item: Any) -> tuple[int, int] | None:
    """(monotonic ns when printed, rtt_ns) of one ``ping -D`` reply line (its clock is CLOCK_REALTIME)."""
    if not isinstance(item, str) or not (m := _PING_LINE.match(item)):
        return None
    real_ns = int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0")[:9])
    offset = time.time_ns() - time.monotonic_ns()
    return real_ns - offset, round(float(m.group(3)) * 1_000_000)


def start_client(t: Topology, series: Series) -> Samples:
    """The workload's client in the pod, running until killed."""
    dest = t.remote.ipv4
    if series.workload == "udp":
        argv = [str(udp_rr_binary()), "client", dest, str(PORT), f"{series.rate:g}"]
        return Samples(t, t.pod.ns, argv, parse_udp)
    interval = f"{1 / series.rate:.3f}"
    return Samples(t, t.pod.ns, ["ping", "-n", "-D", "-i", interval, dest], parse_ping)


@dataclass
class Window:
    config: str
    round: int
    start: int
    end: int
    matched: int | None = None
    captured: dict[str, dict[str, int]] | None = None
    """tcpdump's closing counts per device (``captured``, ``dropped by kernel``, ...)."""


def _listening(capture: Child) -> Callable[[], bool]:
    """Whether tcpdump has said on stderr that it captures."""
    return lambda: any("listening on" in line for line in capture.stderr_lines)


def start_captures(t: Topology) -> dict[str, Child]:
    """tcpdump on the outer device and on the pod's veth, in the node namespace, once both listen."""
    captures = {}
    try:
        for dev in (t.remote.uplink, t.pod.host_veth):
            captures[dev] = Child(t, t.node, ["tcpdump", "-i", dev, "-w", "/dev/null", "-U", "-n"])
        for capture in captures.values():
            capture.wait_until(_listening(capture), CAPTURE_READY_S, '"listening on"')
    except RuntimeError:  # ChildError: one ended or never listened
        for capture in captures.values():
            capture.kill()
        raise
    return captures


def stop_captures(captures: dict[str, Child]) -> dict[str, dict[str, int]]:
    """End each capture by PID (SIGTERM: it prints its counts) and return its counts."""
    counts = {}
    for dev, capture in captures.items():
        capture.signal(signal.SIGTERM)
        capture.wait_exit()
        capture.kill()  # closes its pipes
        found = (_CAPTURE_STATS.match(line) for line in capture.stderr_lines)
        counts[dev] = {m.group(2): int(m.group(1)) for m in found if m}
    return counts


def run_series(
    t: Topology, ctl: HookControl, series: Series, idle_pid: int, rng: random.Random, profile: bool
) -> Record:
    """Alternate the configurations around one running client; return the raw windows and a profile."""
    client = start_client(t, series)
    client.wait_samples(2, 20)
    fields = FIELDS[series.workload]
    pids = {"client": client.pid, "idle": idle_pid}
    loads = {}
    names = {}
    for config in series.configs[1:]:
        if config in PEERS:
            continue
        program_set, kind, whose, _ = PROGRAMS[config]
        names[config] = set_name = f"{series.key}:{program_set}"
        if set_name not in loads:
            text = filter_text(t.uplink_ifindex, pids[whose], fields, fields)
            loads[set_name] = ctl.request("load", name=set_name, kind=kind, filter=text)["seconds"]
    windows: list[Window] = []
    matched_so_far: dict[str, int] = {}
    for round_no in range(series.rounds):
        order = list(series.configs)
        rng.shuffle(order)
        for config in order:
            name = names.get(config)
            if name is not None:
                ctl.attach(name, PROGRAMS[config][3])
            captures = start_captures(t) if config == "tcpdump" else {}
            start = time.monotonic_ns() + int(GUARD_S * 1e9)
            end = start + int(series.seconds * 1e9)
            time.sleep((end - time.monotonic_ns()) / 1e9)  # the measurement window itself
            window = Window(config, round_no, start, time.monotonic_ns())
            if captures:
                window.captured = stop_captures(captures)
            if name is not None:
                reply = ctl.request("detach", name=name)
                if "counters" in reply:
                    total = reply["counters"]["out_count"] + reply["counters"]["in_count"]
                    window.matched = total - matched_so_far.get(name, 0)
                    matched_so_far[name] = total
            windows.append(window)
    costs = profile_series(ctl, client, series, names) if profile and series.rate >= 100 else {}
    for set_name in loads:
        ctl.request("unload", name=set_name)
    client.kill()
    return {"windows": windows, "samples": list(client.samples), "load_seconds": loads, "profile": costs}


def profile_series(ctl: HookControl, client: Samples, series: Series, names: dict[str, str]) -> Record:
    """Per configuration: each program's runs and run time while attached for one window."""
    found: Record = {}
    with BpfStats():
        for config, name in names.items():
            ctl.attach(name, PROGRAMS[config][3])
            before = ctl.request("stats", name=name)
            start = time.monotonic_ns()
            time.sleep(max(1.0, series.seconds))  # the profiled window: every program attached
            end = time.monotonic_ns()
            after = ctl.request("stats", name=name)
            ctl.request("detach", name=name)
            probes = sum(1 for _, rtt in client.between(start, end) if rtt != LOST)
            cost = program_cost(before, after)
            total_ns = sum(c["ns"] for c in cost.values())
            found[config] = {
                "probes": probes,
                "programs": cost,
                "total_ns": total_ns,
                "ns_per_probe": round(total_ns / probes, 1) if probes else None,
            }
    return found


def analyse(series: Series, raw: Record, rng: random.Random) -> Record:
    """Per configuration: pooled RTT quantiles, and the paired differences against no agent."""
    samples: list[tuple[int, int]] = raw["samples"]
    samples.sort()
    times = [s[0] for s in samples]
    per_window: dict[tuple[str, int], list[int]] = {}
    lost: dict[str, int] = dict.fromkeys(series.configs, 0)
    matched: dict[str, int] = dict.fromkeys(series.configs, 0)
    for w in raw["windows"]:
        lo, hi = bisect.bisect_left(times, w.start), bisect.bisect_left(times, w.end)
        rtts = [rtt for _, rtt in samples[lo:hi]]
        per_window[w.config, w.round] = [r for r in rtts if r != LOST]
        lost[w.config] += sum(1 for r in rtts if r == LOST)
        matched[w.config] += w.matched or 0
    result: Record = {
        "rate": series.rate,
        "rounds": series.rounds,
        "seconds": series.seconds,
        "load_seconds": raw["load_seconds"],
        "configs": {},
    }
    for config in series.configs:
        pooled = [r for (c, _), rtts in per_window.items() if c == config for r in rtts]
        entry: Record = {
            "probes": len(pooled),
            "lost": lost[config],
            "rtt_us": {f"p{int(q * 100)}": round(quantile(pooled, q) / 1e3, 2) for q in (0.5, 0.9, 0.99)},
        }
        if config.startswith(("match", "least-work")):
            entry["engine_measured"] = matched[config]
        if config == "tcpdump":
            counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
            for w in raw["windows"]:
                for dev, found in (w.captured or {}).items():
                    counts[dev].update(found)
            entry["tcpdump_counts"] = {dev: dict(c) for dev, c in counts.items()}
        if config != "none":
            diffs = [
                median(per_window[config, r]) - median(per_window["none", r])
                for r in range(series.rounds)
                if per_window.get((config, r)) and per_window.get(("none", r))
            ]
            entry["paired_diff_us"] = Estimate.of(diffs, rng).scaled(1e-3).to_dict()
            if series.rate < 100:  # few probes per window: the pooled medians say more
                rounds = [r for r in range(series.rounds) if per_window.get((config, r))]
                pairs = [(per_window[config, r], per_window["none", r]) for r in rounds]
                entry["pooled_diff_us"] = pooled_difference(pairs, rng).scaled(1e-3).to_dict()
        result["configs"][config] = entry
    result["profile"] = raw["profile"]
    return result


def pooled_difference(
    pairs: list[tuple[list[int], list[int]]], rng: random.Random, reps: int = 1000
) -> Estimate:
    """median(all config RTTs) - median(all no-agent RTTs), with a 95% interval from resampling
    whole rounds (each a pair of windows), which keeps drift between rounds in the interval."""

    def difference(chosen: Sequence[tuple[list[int], list[int]]]) -> float:
        return median([r for a, _ in chosen for r in a]) - median([r for _, b in chosen for r in b])

    estimates = [difference([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(reps)]
    return Estimate(difference(pairs), quantile(estimates, 0.025), quantile(estimates, 0.975), len(pairs))


def short(program: str) -> str:
    """A program's hook name without bcc's prefixes."""
    return program.removeprefix("raw_tracepoint__").removeprefix("tracepoint__syscalls__")


def report(results: dict[str, Record]) -> list[str]:
    """Human-readable table lines."""
    lines = [
        f"{'series':<14} {'config':<21} {'probes':>7} {'p50 RTT':>9} {'p99 RTT':>9}  "
        f"{'paired diff of medians vs none [95% CI]':<40} target"
    ]
    for key, res in results.items():
        target = TARGET_US.get(res["rate"])
        peer = res["configs"].get("tcpdump", {}).get("paired_diff_us")
        for config, entry in res["configs"].items():
            diff = entry.get("paired_diff_us")
            text, verdict = "", ""
            if diff is not None:
                text = f"{diff['median']:+.1f} us [{diff['ci95'][0]:+.1f}, {diff['ci95'][1]:+.1f}]"
                if config.startswith("match") and target is not None and key.startswith("udp"):
                    verdict = f"< {target:g} us: {'met' if diff['median'] < target else 'MISSED'}"
                engine = config in ("nonmatch", "match-stream", "match-hist")
                if peer and peer["median"] > 0 and diff["median"] > 0 and engine:
                    verdict += f" (x{diff['median'] / peer['median']:.2f} of tcpdump's)"
            pooled = entry.get("pooled_diff_us")
            if pooled is not None:
                verdict += f" (pooled medians: {pooled['median']:+.1f} us [{pooled['ci95'][0]:+.1f}, "
                verdict += f"{pooled['ci95'][1]:+.1f}])"
            lines.append(
                f"{key:<14} {config:<21} {entry['probes']:>7} {entry['rtt_us']['p50']:>7.1f}us "
                f"{entry['rtt_us']['p99']:>7.1f}us  {text:<40} {verdict}"
            )
            for dev, counts in entry.get("tcpdump_counts", {}).items():
                lines.append(
                    f"{'':<14} tcpdump on {dev}: {counts.get('received by filter', '?')} packets received "
                    f"by its filter, {counts.get('captured', '?')} captured (read by tcpdump), "
                    f"{counts.get('dropped by kernel', '?')} dropped by the kernel (all its windows)"
                )
        for config, prof in res.get("profile", {}).items():
            top = sorted(prof["programs"].items(), key=lambda kv: -kv[1]["ns"])[:4]
            parts = ", ".join(f"{short(n)} {c['runs']}x{c['ns_per_run']:.0f}ns" for n, c in top if c["runs"])
            lines.append(
                f"{'':<14} profile {config:<12} {prof['ns_per_probe']} ns/probe in programs; {parts}"
            )
    return lines


def plot(results: dict[str, Record], path: Path) -> None:
    """Paired differences with intervals, one row per series and configuration."""
    rows = []
    for group, (key, res) in enumerate(results.items()):
        for config, entry in res["configs"].items():
            diff = entry.get("paired_diff_us")
            if diff is not None:
                rows.append(
                    PlotRow(f"{key} {config}", diff["median"], diff["ci95"][0], diff["ci95"][1], group)
                )
    svg_intervals(
        path,
        "RTT added by the engine's hooks (median of paired round differences, 95% CI)",
        "microseconds added to the median RTT",
        rows,
        marks=[(3.0, "3 us"), (5.0, "5 us")],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per series (each has one window per config)"
    )
    parser.add_argument("--fast-seconds", type=float, default=0.8, help="window length at 1000 probes/s")
    parser.add_argument("--slow-seconds", type=float, default=1.6, help="window length at 5 probes/s")
    parser.add_argument("--workloads", default="udp,ping", help="comma-separated: udp, ping")
    parser.add_argument("--rates", default="1000,5", help="comma-separated probe rates (per second)")
    parser.add_argument("--no-profile", action="store_true", help="skip the bpf_stats profile phase")
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="also run experiments: empty programs on only the system-call hooks, or only the others, "
        "or raw tracepoints on every system call instead; and bench/least_work.c, the least work that "
        "measures the round trips (a bound)",
    )
    parser.add_argument("--configs", default="", help="comma-separated configurations to run instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "rtt_overhead.json")
    parser.add_argument("--plot", type=Path, default=IMAGES / "rtt_overhead.svg")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
    except ValueError:
        parser.error("--rates takes numbers")
    if not set(workloads) <= set(FIELDS) or not workloads:
        parser.error("--workloads takes udp and/or ping")
    if args.rounds < 2 or any(r <= 0 for r in rates):
        parser.error("--rounds must be at least 2 and rates positive")
    configs: tuple[str, ...] = (*CONFIGS, *EXPERIMENTS) if args.experiment else CONFIGS
    if args.configs:
        configs = ("none", *(c for c in args.configs.split(",") if c and c != "none"))
        if unknown := set(configs) - set(PROGRAMS) - {"none", *PEERS}:
            known = ", ".join((*PROGRAMS, *PEERS))
            parser.error(f"--configs: unknown {', '.join(sorted(unknown))}; known: {known}")
    require_root()
    if "tcpdump" in configs and shutil.which("tcpdump") is None:
        print("rtt_overhead: skipping the tcpdump configuration: tcpdump is not installed "
              "(apt-get install -y tcpdump)", file=sys.stderr, flush=True)
        configs = tuple(c for c in configs if c != "tcpdump")
    rng = random.Random(args.seed)
    began = time.monotonic()
    info = machine() | {"tracing_programs_before": tracing_programs()}
    results: dict[str, Record] = {}
    with Topology(prefix=f"mace-tb{random.randrange(1 << 16):04x}") as t:
        udp_rr_server(t, t.remote.ns, PORT)
        idle = idle_process(t, t.pod.ns)
        ctl = HookControl(t, t.node)
        try:
            for workload in workloads:
                for rate in rates:
                    seconds = args.fast_seconds if rate >= 100 else args.slow_seconds
                    series = Series(workload, rate, args.rounds, seconds, configs)
                    print(
                        f"{series.key}: {args.rounds} rounds x {len(configs)} windows of {seconds:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    raw = run_series(t, ctl, series, idle.pid, rng, not args.no_profile)
                    results[series.key] = analyse(series, raw, rng)
            info["attach_refused"] = ctl.refused
        finally:
            ctl.close()
    info["tracing_programs_after"] = tracing_programs()
    lines = report(results)
    print("\n".join(lines))
    write_results("rtt_overhead", args.out, info, began, results)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
