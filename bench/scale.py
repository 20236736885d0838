"""How the node's one engine scales with its number of probes.

For 1, 10, 100 and 1,000 probes on one engine (all but one naming idle processes, each in a cgroup of
its own, as idle pods; the last one names a pinging process), this prints:

    syscall_ns     ns per non-blocking recvfrom of a process no probe names (bench/syscall_loop.c),
                   against the same loop with no engine attached (the idle processes and cgroups exist)
    hook_ns        of which the engine's programs ran (kernel.bpf_stats_enabled): ns per call in the
                   recvfrom entry and exit programs
    packet_ns      ns per run of each outer-device program while ping runs (every packet of the device
                   meets them, whoever it is for)
    add_ms         how long NodeEngine.add took for the probes (median and max): map writes only
    first_sample_s from adding a probe on the pinging process to its first measured packet
    rss_mib        the engine's process (bcc and LLVM included) with all the probes added
    ping_rtt_us    ping's average RTT (ping -i 0.002, --pings of them) with the probes attached

The engine runs in the lab topology's node namespace, in this process (setns before any thread).

Run: sudo .venv/bin/python bench/scale.py [--counts 1,10,100,1000] [--calls N] [--pings N]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchlib import BpfStats, Record, c_binary, machine, program_cost, program_stats, require_root
from mace_agent.cgroups import cgroup2_roots
from mace_agent.config import EngineConfig
from mace_agent.engine import NodeEngine, ProbeSpec

from mace.grammar import parse
from mace.probe import Scope
from mace_lab.processes import filter_text
from mace_lab.topology import Topology

CLONE_NEWNET = 0x40000000


def enter_netns(ns: str) -> None:
    """Move this (still single-threaded) process into network namespace ``ns``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def syscall_ns(t: Topology, calls: int) -> float:
    out = t.run(t.pod.ns, [str(c_binary("syscall_loop")), "recvfrom", str(calls)], timeout=120)
    return float(json.loads(out.strip().splitlines()[-1])["ns_per_call"])


def cost(before: Record, after: Record, match: str) -> dict[str, float]:
    """ns per run between two program_stats records of the programs whose name contains ``match``."""
    return {name.split("__", 1)[-1]: c["ns_per_run"] for name, c in program_cost(before, after).items()
            if match in name and c["runs"]}


def ping_rtt_us(t: Topology, count: int) -> float:
    out = t.run(t.pod.ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.002", t.remote.ipv4],
                timeout=60 + count * 0.01)
    found = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(found.group(1)) * 1000 if found else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,10,100,1000")
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--pings", type=int, default=2000, help="pings for the packet and RTT figures")
    args = parser.parse_args()
    require_root()
    counts = [int(c) for c in args.counts.split(",")]
    root = Path(cgroup2_roots()[0]) / f"mace-bench-{os.getpid()}"
    root.mkdir()
    sleepers: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    with Topology() as t:
        try:
            baseline = syscall_ns(t, args.calls)
            enter_netns(t.node)
            for i in range(max(counts)):
                group = root / f"idle{i}"
                group.mkdir()
                proc = t.popen(t.pod.ns, ["sleep", "100000"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
                (group / "cgroup.procs").write_text(str(proc.pid))
                sleepers.append(proc)
            pinger_group = root / "pinger"
            pinger_group.mkdir()
            pinger = t.popen(t.pod.ns, ["ping", "-n", "-i", "0.05", t.remote.ipv4],
                             stdout=subprocess.DEVNULL)
            (pinger_group / "cgroup.procs").write_text(str(pinger.pid))
            sleepers.append(pinger)
            for count in counts:
                idle_ns = syscall_ns(t, args.calls)
                config = EngineConfig(max_probes=max(2 * count, 16), stream=True)
                with NodeEngine(config) as engine:
                    adds = []
                    for proc in sleepers[:count - 1]:
                        text = filter_text(t.uplink_ifindex, proc.pid, ["icmp_id", "icmp_seq"],
                                           ["icmp_seq"])
                        began = time.monotonic()
                        engine.add(ProbeSpec(parse(text), Scope.cgroup))
                        adds.append(time.monotonic() - began)
                    text = filter_text(t.uplink_ifindex, pinger.pid, ["icmp_id", "icmp_seq"], ["icmp_seq"])
                    began = time.monotonic()
                    probe = engine.add(ProbeSpec(parse(text), Scope.cgroup))
                    adds.append(time.monotonic() - began)
                    first = None
                    while time.monotonic() - began < 10:
                        engine.poll(0.01)
                        if probe.take_events():
                            first = time.monotonic() - began
                            break
                    with BpfStats():
                        before = {"programs": program_stats(engine.bpf)}
                        loop_ns = syscall_ns(t, args.calls)
                        after = {"programs": program_stats(engine.bpf)}
                        rtt = ping_rtt_us(t, args.pings)
                        pinged = {"programs": program_stats(engine.bpf)}
                    hook_ns = sum(cost(before, after, "recvfrom").values())
                    row = {"probes": count, "syscall_ns": round(loop_ns, 1),
                           "syscall_ns_no_engine": round(idle_ns, 1),
                           "syscall_ns_no_engine_no_idle": round(baseline, 1),
                           "hook_ns": round(hook_ns, 1),
                           "packet_ns": {**cost(after, pinged, "net_dev"), **cost(after, pinged, "netif")},
                           "add_ms_median": round(statistics.median(adds) * 1e3, 3),
                           "add_ms_max": round(max(adds) * 1e3, 3),
                           "first_sample_s": None if first is None else round(first, 3),
                           "rss_mib": round(rss_mib(), 1), "ping_rtt_us": round(rtt, 1),
                           "attach_s": round(engine.attach_seconds, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            for proc in sleepers:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            for group in sorted(p for p in root.iterdir() if p.is_dir()):
                group.rmdir()
            root.rmdir()
    print(json.dumps({"machine": machine(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
