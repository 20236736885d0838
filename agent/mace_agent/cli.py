"""``mace-agent``: ``run`` the engine for one filter on this node and print what it measures;
``serve`` the node agent that measures every LatencyProbe resolved for this node.

Exit codes: 0 measured until the duration, a signal, or the target vanished (the summary's
``stop_reason`` says which); 2 bad input (filter, options, no such process or device);
3 the kernel or node lacks something the engine needs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from mace.grammar import FilterError, parse
from mace.probe import Scope
from mace_agent.config import EngineConfig, add_vxlan_ports_option
from mace_agent.engine import Engine, NodeEngine, ProbeLimitError
from mace_agent.kernel import KernelFeatureError
from mace_agent.node.cli import register, serve
from mace_agent.summary import LatencySummary, Snapshot
from mace_agent.target import TargetError

EXIT_BAD_INPUT = 2
EXIT_KERNEL = 3
POLL_S = 0.2
ATTACHED = "mace-agent: attached"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace-agent", description="The Mace node agent: measure one Protocol Filter (run), or "
        "measure every LatencyProbe resolved for this node (serve).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one Protocol Filter's packets on this node")
    run.add_argument("--filter", help="the Protocol Filter text (required unless --print-program)")
    run.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.process.value,
                     help="process: proc-id and its threads (default); cgroup: every process of "
                          "proc-id's cgroup v2, threads and later children included")
    run.add_argument("--print-program", action="store_true",
                     help="print the exact C program handed to bcc on this kernel and exit")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument("--format", choices=("json", "text"), default="json")
    run.add_argument("--no-stream", action="store_true",
                     help="no per-packet events; summaries from the in-kernel histograms")
    defaults = EngineConfig()
    run.add_argument("--rate-limit", type=int, default=defaults.rate_limit,
                     help="per-packet events per second at most (0: no limit)")
    run.add_argument("--map-entries", type=int, default=defaults.map_entries,
                     help="capacity of each pending-packet map")
    run.add_argument("--max-probes", type=int, default=defaults.max_probes,
                     help="probe slots of the engine's maps (--print-program)")
    run.add_argument("--ttl", type=float, default=defaults.ttl_s,
                     help="seconds after which an unmatched packet is expired")
    add_vxlan_ports_option(run)
    register(commands)
    return parser


class _Stop:
    """Set by SIGINT/SIGTERM; the main loop notices within one poll interval."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def _direction_text(name: str, s: LatencySummary) -> str:
    return (f"{name}: n={s.count} p50={s.p50_ns / 1e3:.1f}us p90={s.p90_ns / 1e3:.1f}us "
            f"p99={s.p99_ns / 1e3:.1f}us max={s.max_ns / 1e3:.1f}us")


def _totals_text(snap: Snapshot) -> str:
    return (f"unmatched={snap.unmatched} dropped={snap.dropped} "
            f"rate_limited={snap.counters['rate_limited']}")


def _live_line(elapsed: float, snap: Snapshot, earlier: Snapshot) -> str:
    """One line per second: the last second's latencies, then running totals."""
    window = snap.since(earlier)
    totals = " ".join(f"{d}={s.count}" for d, s in snap.directions.items())
    return " | ".join([f"{elapsed:6.1f}s last 1s", *(_direction_text(d, s) for d, s in window.items()),
                       f"total {totals} {_totals_text(snap)}"])


def _summary_text(reason: str, snap: Snapshot) -> str:
    return " | ".join([f"summary ({reason})", *(_direction_text(d, s) for d, s in snap.directions.items()),
                       _totals_text(snap)])


def _measure(engine: Engine, args: argparse.Namespace, out: TextIO, stop: _Stop) -> str:
    """Run until the duration, a signal or the target's end; return the stop reason."""
    began = time.monotonic()
    deadline = None if args.duration is None else began + args.duration
    next_line = began + 1.0
    earlier = engine.snapshot() if args.format == "text" else None
    while True:
        if stop.requested:
            return "interrupted"
        reason = engine.stop_reason()
        if reason is not None:
            return reason
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "duration"
        wait = POLL_S if deadline is None else min(POLL_S, deadline - now)
        events = engine.poll(wait)
        if args.format == "json":
            for event in events:
                out.write(json.dumps(event.to_dict()) + "\n")
            if events:
                out.flush()
        elif earlier is not None and time.monotonic() >= next_line:
            snap = engine.snapshot()
            out.write(_live_line(time.monotonic() - began, snap, earlier) + "\n")
            out.flush()
            earlier = snap
            next_line += 1.0


def _print_program(args: argparse.Namespace) -> int:
    config = EngineConfig(map_entries=args.map_entries, max_probes=args.max_probes, ttl_s=args.ttl,
                          vxlan_ports=args.vxlan_ports)
    mistakes = config.problems()
    for mistake in mistakes:
        print(f"mace-agent: {mistake}", file=sys.stderr)
    if mistakes:
        return EXIT_BAD_INPUT
    try:
        sys.stdout.write(NodeEngine(config).program_text())
    except KernelFeatureError as error:
        print(f"mace-agent: {error}", file=sys.stderr)
        return EXIT_KERNEL
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.print_program:
        return _print_program(args)
    if not args.filter:
        print("mace-agent: run needs --filter (or --print-program)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        flt = parse(args.filter)
    except FilterError as error:
        for problem in error.problems:
            print(f"mace-agent: invalid filter: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = EngineConfig(map_entries=args.map_entries, rate_limit=args.rate_limit,
                          stream=not args.no_stream, ttl_s=args.ttl, vxlan_ports=args.vxlan_ports)
    mistakes = config.problems()
    if args.duration is not None and not args.duration > 0:
        mistakes.append("duration must be positive")
    if mistakes:
        for mistake in mistakes:
            print(f"mace-agent: {mistake}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    engine = Engine(flt, config, scope=Scope(args.scope))
    try:
        engine.start()
    except (TargetError, ProbeLimitError) as error:
        print(f"mace-agent: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KernelFeatureError as error:
        print(f"mace-agent: {error}", file=sys.stderr)
        return EXIT_KERNEL
    try:
        print(ATTACHED, file=sys.stderr, flush=True)
        out = sys.stdout
        try:
            reason = _measure(engine, args, out, stop)
            for event in engine.poll(0):
                if args.format == "json":
                    out.write(json.dumps(event.to_dict()) + "\n")
            snap = engine.snapshot()
            if args.format == "json":
                summary = snap.to_dict() | {"stop_reason": reason,
                                            "attach_s": round(engine.attach_seconds, 3)}
                out.write(json.dumps({"summary": summary}) + "\n")
            else:
                out.write(_summary_text(reason, snap) + "\n")
            out.flush()
        except BrokenPipeError:  # the reader went away: nothing more can be written
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        engine.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mace-agent`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
