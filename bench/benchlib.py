"""Shared pieces of the bench scripts: statistics, result files, the machine's description, an SVG
interval plot, sample-keeping children and the client side of :mod:`hookctl`.

The scripts are run as ``sudo .venv/bin/python bench/<script>.py``; this module sits beside them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mace_lab.processes import Child
from mace_lab.topology import Topology

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
IMAGES = REPO / "docs" / "img"
HOOKCTL = BENCH / "hookctl.py"
EXIT_USAGE = 2

Record = dict[str, Any]


def require_root() -> None:
    """Exit with a clear message unless running as root (namespaces and eBPF need it)."""
    if os.geteuid() != 0:
        print(
            f"{Path(sys.argv[0]).name}: needs root (namespaces, eBPF): "
            f"run it as sudo {sys.executable} {sys.argv[0]}",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)


def machine() -> Record:
    """What the figures were measured on: kernel, CPU, memory, load, software versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import bcc  # type: ignore[import-not-found,unused-ignore]

        bcc_version = str(getattr(bcc, "__version__", "unknown"))
    except ImportError:
        bcc_version = "missing"
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "bcc": bcc_version,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }


# -- statistics -----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(float(v) for v in values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN when empty."""
    return quantile(values, 0.5)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[Sequence[float]], float],
    rng: random.Random,
    reps: int = 4000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (resampled with replacement)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    n = len(values)
    estimates = [stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(reps)]
    tail = (1 - level) / 2
    return quantile(estimates, tail), quantile(estimates, 1 - tail)


@dataclass(frozen=True)
class Estimate:
    """A median with its 95% bootstrap interval, from ``n`` values (same unit as the values)."""

    median: float
    low: float
    high: float
    n: int

    @staticmethod
    def of(values: Sequence[float], rng: random.Random) -> Estimate:
        """The median of ``values`` and its interval."""
        low, high = bootstrap_ci(values, median, rng)
        return Estimate(median(values), low, high, len(values))

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in another unit (values multiplied by ``factor``)."""
        return Estimate(self.median * factor, self.low * factor, self.high * factor, self.n)

    def to_dict(self, digits: int = 2) -> Record:
        """JSON form."""
        return {
            "median": round(self.median, digits),
            "ci95": [round(self.low, digits), round(self.high, digits)],
            "n": self.n,
        }

    def text(self, unit: str, digits: int = 1) -> str:
        """``+1.2 [0.8, 1.6] us`` style."""
        return f"{self.median:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] {unit}"


# -- output ---------------------------------------------------------------------------------------


def write_results(bench: str, path: Path, machine: Record, began: float, results: Record) -> None:
    """Write one run's results as indented JSON (creating the directory), with the command that
    made them, the machine and the run's duration since the monotonic time ``began``."""
    data = {"bench": bench, "command": " ".join(sys.argv), "machine": machine,
            "duration_s": round(time.monotonic() - began, 1), "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


@dataclass(frozen=True)
class PlotRow:
    """One row of an interval plot: a label, a point and its interval, and a colour group."""

    label: str
    value: float
    low: float
    high: float
    group: int = 0


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_intervals(
    path: Path, title: str, unit: str, rows: Sequence[PlotRow], marks: Sequence[tuple[float, str]] = ()
) -> None:
    """Write a horizontal interval plot (points with bars) as SVG; ``marks`` are labelled vertical lines."""
    finite = [v for r in rows for v in (r.value, r.low, r.high) if v == v]
    finite += [m for m, _ in marks] + [0.0]
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    left, right, top, row_h = 330, 40, 60, 22
    width = 900
    height = top + row_h * len(rows) + 50
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{_esc(title)}</text>',
    ]
    bottom = top + row_h * len(rows)
    step = _tick_step(hi - lo)
    tick = step * int(lo / step)
    while tick <= hi:
        if tick >= lo:
            out.append(
                f'<line x1="{x(tick):.1f}" y1="{top - 6}" x2="{x(tick):.1f}" y2="{bottom}" stroke="#e0e0e0"/>'
            )
            out.append(f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>')
        tick += step
    out.append(f'<text x="{left + plot_w / 2}" y="{bottom + 36}" text-anchor="middle">{_esc(unit)}</text>')
    for k, (value, label) in enumerate(marks):
        label_y = top - 14 - 12 * (k % 2)  # alternate heights so that close marks stay readable
        out.append(
            f'<line x1="{x(value):.1f}" y1="{label_y + 4}" x2="{x(value):.1f}" y2="{bottom}" '
            f'stroke="#888" stroke-dasharray="4,3"/>'
        )
        out.append(
            f'<text x="{x(value):.1f}" y="{label_y}" text-anchor="middle" fill="#555">{_esc(label)}</text>'
        )
    for i, row in enumerate(rows):
        y = top + row_h * i + row_h / 2
        colour = _COLOURS[row.group % len(_COLOURS)]
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_esc(row.label)}</text>')
        if row.low == row.low and row.high == row.high:
            out.append(
                f'<line x1="{x(row.low):.1f}" y1="{y:.1f}" x2="{x(row.high):.1f}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
        if row.value == row.value:
            out.append(f'<circle cx="{x(row.value):.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def _tick_step(span: float) -> float:
    raw = span / 8
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return magnitude * next((f for f in (1, 2, 5) if magnitude * f >= raw), 10)


# -- children -------------------------------------------------------------------------------------


class Samples(Child):
    """A child whose stdout lines are turned into compact samples by ``parse`` (None: ignored).

    At most ``keep`` samples are kept (memory stays bounded on long runs).
    """

    def __init__(
        self,
        topology: Topology,
        ns: str,
        argv: Sequence[str],
        parse: Callable[[Any], tuple[int, ...] | None],
        keep: int = 500_000,
    ) -> None:
        self.samples: list[tuple[int, ...]] = []
        self._parse = parse
        self._keep_samples = keep
        super().__init__(topology, ns, argv, keep=100)

    def _take(self, item: Any) -> None:
        sample = self._parse(item)
        if sample is None:
            super()._take(item)
        elif len(self.samples) < self._keep_samples:
            self.samples.append(sample)

    def count(self) -> int:
        """Samples kept so far."""
        with self._changed:
            return len(self.samples)

    def wait_samples(self, count: int, timeout: float) -> None:
        """Wait until ``count`` samples arrived."""
        self.wait_until(lambda: len(self.samples) >= count, timeout, f"{count} samples")

    def between(self, start: int, end: int, index: int = 0) -> list[tuple[int, ...]]:
        """Samples whose element ``index`` lies in [start, end)."""
        with self._changed:
            return [s for s in self.samples if start <= s[index] < end]


def c_binary(name: str) -> Path:
    """``bench/<name>.c`` compiled (once per change of the source) into ``bench/results/<name>``."""
    source = BENCH / f"{name}.c"
    binary = RESULTS / name
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True,
                       capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit(f"bench: needs a C compiler for bench/{name}.c (sudo scripts/dev setup installs gcc)")
    except subprocess.CalledProcessError as error:
        sys.exit(f"bench: cannot compile bench/{name}.c:\n{error.stderr}")
    return binary


def udp_rr_binary() -> Path:
    """The UDP request/response client and echo server (``bench/udp_rr.c``)."""
    return c_binary("udp_rr")


def udp_rr_server(topology: Topology, ns: str, port: int) -> Child:
    """bench/udp_rr.c's echo server in ``ns`` on ``port``, once it says it is bound."""
    server = Child(topology, ns, [str(udp_rr_binary()), "server", str(port)])
    server.wait_until(lambda: any(isinstance(line, dict) and line.get("ready") for line in server.lines),
                      20, "the echo server's ready line")
    return server


def idle_process(topology: Topology, ns: str) -> subprocess.Popen[Any]:
    """A process that sleeps in ``ns`` (a PID that sends nothing: the non-matching filter's target)."""
    return topology.popen(ns, ["sleep", "100000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def tracing_programs() -> int | None:
    """How many tracepoint/raw-tracepoint eBPF programs are loaded on the machine (None: no bpftool).

    Other users' programs on the same hooks slow every configuration down, "none" included: the
    scripts record this count before and after a run.
    """
    try:
        out = subprocess.run(
            ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(1 for p in json.loads(out) if p.get("type") in ("tracepoint", "raw_tracepoint"))


def udp_mib(ns: str) -> dict[str, int]:
    """The Udp counters of /proc/net/snmp in namespace ``ns`` (InDatagrams: datagrams read by apps)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")]
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


def ns_counters(ns: str, dev: str) -> dict[str, int]:
    """The kernel's packet counters of device ``dev`` in namespace ``ns``."""
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    stats = json.loads(out)[0]["stats64"]
    return {
        "rx_packets": int(stats["rx"]["packets"]),
        "rx_dropped": int(stats["rx"]["dropped"]),
        "tx_packets": int(stats["tx"]["packets"]),
        "tx_dropped": int(stats["tx"]["dropped"]),
    }


class HookControlError(RuntimeError):
    """The hook controller failed or did not answer in time."""


class HookControl:
    """The bench's handle on a :mod:`hookctl` process in the node namespace.

    Program sets are loaded once (compiled, then detached) and attached/detached per round.
    """

    def __init__(self, topology: Topology, ns: str, env: dict[str, str] | None = None) -> None:
        """Start hookctl in ``ns`` (``env``: its environment, by default this process's)."""
        self._replies: queue.Queue[Record | None] = queue.Queue()
        self.refused = 0
        """Attach attempts the kernel refused (and that were retried)."""
        self._stderr: list[str] = []
        self.proc = topology.popen(
            ns,
            [sys.executable, str(HOOKCTL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                self._stderr.append(f"(stdout) {line.rstrip()}")
        self._replies.put(None)

    def _read_stderr(self, stream: TextIO) -> None:
        for line in stream:
            if len(self._stderr) < 200:
                self._stderr.append(line.rstrip())

    def request(self, op: str, timeout: float = 60.0, **fields: Any) -> Record:
        """Send one command and return its reply; raise HookControlError on failure or timeout."""
        if self.proc.stdin is None or self.proc.poll() is not None:
            raise HookControlError(f"hookctl is not running: {self.stderr()}")
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise HookControlError(
                f"hookctl: no reply to {op} within {timeout:g} s: {self.stderr()}"
            ) from None
        if reply is None:
            raise HookControlError(f"hookctl exited during {op}: {self.stderr()}")
        if not reply.get("ok"):
            raise HookControlError(f"hookctl {op}: {reply.get('error')}")
        return reply

    def attach(self, name: str, stream: bool, patience: float = 60.0) -> None:
        """Attach program set ``name``, retrying while the kernel refuses (other users' programs can
        fill a tracepoint's 64 perf-event slots for a while); raise after ``patience`` seconds."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.request("attach", name=name, stream=stream)
                return
            except HookControlError as error:
                if "Failed to attach" not in str(error) or time.monotonic() > deadline:
                    raise
                self.refused += 1
            time.sleep(0.5)  # back-off before asking the kernel again

    def stderr(self) -> str:
        """The controller's last stderr lines."""
        return "\n".join(self._stderr[-20:]) or "(no stderr)"

    def close(self, timeout: float = 30.0) -> None:
        """Close its stdin (it unloads everything and exits) and wait for it."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.stdin = None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)


def program_stats(bpf: Any) -> dict[str, dict[str, int]]:
    """``run_cnt`` and ``run_time_ns`` of each program of a bcc object loaded in this process, from the
    programs' fdinfo (counted while ``kernel.bpf_stats_enabled`` is 1)."""
    found: dict[str, dict[str, int]] = {}
    for name, fn in bpf.funcs.items():
        values = dict.fromkeys(("run_cnt", "run_time_ns"), 0)
        with open(f"/proc/self/fdinfo/{fn.fd}") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key in values:
                    values[key] = int(value)
        found[name.decode()] = values
    return found


def program_cost(before: Record, after: Record) -> dict[str, dict[str, float]]:
    """Per program: runs and nanoseconds between two ``stats`` replies (needs kernel.bpf_stats_enabled)."""
    cost = {}
    for name, now in after["programs"].items():
        then = before["programs"].get(name, {"run_cnt": 0, "run_time_ns": 0})
        runs = now["run_cnt"] - then["run_cnt"]
        ns = now["run_time_ns"] - then["run_time_ns"]
        cost[name] = {"runs": runs, "ns": ns, "ns_per_run": round(ns / runs, 1) if runs else 0.0}
    return cost


class BpfStats:
    """Turns ``kernel.bpf_stats_enabled`` on for a block and restores the previous value."""

    PATH = Path("/proc/sys/kernel/bpf_stats_enabled")

    def __enter__(self) -> BpfStats:
        self.previous = self.PATH.read_text().strip()
        self.PATH.write_text("1\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.PATH.write_text(self.previous + "\n")
