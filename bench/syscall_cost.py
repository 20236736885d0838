"""What an attached engine costs the system calls of every other process on the node.

A system-call tracepoint, once any program is attached to it, sends every system call of every
task through the kernel's slow entry path, whoever the program is for. This bench times two
tight loops (bench/syscall_loop.c) run by a process the filter does not name, in a pod namespace
of the lab topology: getppid (a call no hook names) and a non-blocking recvfrom on an empty UDP
socket (a hooked call that returns nothing). Configurations alternate in rounds, in a fresh
random order each round:

    none          no programs attached
    empty         programs that return 0, on every hook the engine uses for a UDP filter
    nonmatch      the engine, a UDP filter naming another process (an idle one in the same pod):
                  UDP needs the receive system calls hooked
    nonmatch-tcp  the same with a TCP filter, for which only the send system calls are hooked
    empty-rawsys  experiment: empty raw tracepoints on every system call's entry and exit
                  (raw_syscalls) instead of the engine's system-call hooks

The figure is the median over rounds of the paired difference in ns per call against the same
round's no-agent run, with a 95% bootstrap interval.

Run: sudo .venv/bin/python bench/syscall_cost.py [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from benchlib import (
    RESULTS,
    Estimate,
    HookControl,
    Record,
    c_binary,
    idle_process,
    machine,
    median,
    require_root,
    write_results,
)

from mace_lab.processes import filter_text
from mace_lab.topology import Topology

CONFIGS = ("none", "empty", "nonmatch", "nonmatch-tcp", "empty-rawsys")
PROGRAM_SETS = {  # configuration: (hookctl kind, the filter's corr field)
    "empty": ("empty", "udp_payload"),
    "nonmatch": ("engine", "udp_payload"),
    "nonmatch-tcp": ("engine", "tcp_seq"),
    "empty-rawsys": ("empty-rawsys", "udp_payload"),
}
CALLS = ("getppid", "recvfrom")


def time_loop(t: Topology, ns: str, call: str, calls: int) -> float:
    """ns per call of one loop run in ``ns``."""
    out = t.run(ns, [str(c_binary("syscall_loop")), call, str(calls)], timeout=120)
    return float(json.loads(out.strip().splitlines()[-1])["ns_per_call"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds (each runs every configuration)")
    parser.add_argument("--calls", type=int, default=400_000, help="calls per loop run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "syscall_cost.json")
    args = parser.parse_args()
    if args.rounds < 2 or args.calls < 1:
        parser.error("--rounds must be at least 2 and --calls positive")
    require_root()
    rng = random.Random(args.seed)
    began = time.monotonic()
    info = machine()
    runs: dict[tuple[str, str], list[float]] = {(c, call): [] for c in CONFIGS for call in CALLS}
    with Topology(prefix=f"mace-sc{random.randrange(1 << 16):04x}") as t:
        idle = idle_process(t, t.pod.ns)
        ctl = HookControl(t, t.node)
        try:
            for config, (kind, field) in PROGRAM_SETS.items():
                text = filter_text(t.uplink_ifindex, idle.pid, [field], [field])
                ctl.request("load", name=config, kind=kind, filter=text)
            for _ in range(args.rounds):
                order = list(CONFIGS)
                rng.shuffle(order)
                for config in order:
                    if config != "none":
                        ctl.attach(config, False)
                    for call in CALLS:
                        runs[config, call].append(time_loop(t, t.pod.ns, call, args.calls))
                    if config != "none":
                        ctl.request("detach", name=config)
        finally:
            ctl.close()
    results: Record = {}
    print(f"{'call':<9} {'config':<13} {'ns/call':>8}  added ns/call, paired median [95% CI]")
    for call in CALLS:
        results[call] = {}
        for config in CONFIGS:
            values = runs[config, call]
            entry: Record = {"ns_per_call": round(median(values), 1), "runs": values}
            line = f"{call:<9} {config:<13} {median(values):>8.1f}"
            if config != "none":
                diffs = [a - b for a, b in zip(values, runs["none", call], strict=True)]
                added = Estimate.of(diffs, rng)
                entry["added_ns"] = added.to_dict(1)
                line += f"  {added.text('ns')}"
            results[call][config] = entry
            print(line)
    write_results("syscall_cost", args.out, info, began, results)
    print(f"wrote {args.out} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
