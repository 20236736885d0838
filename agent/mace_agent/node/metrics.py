"""``/metrics``: the Prometheus text exposition format (version 0.0.4), written by hand.

Per probe and direction a latency histogram (``mace_probe_latency_seconds``), whose ``le`` bounds are the
powers of two from 2^10 ns (~1 us) to 2^32 ns (~4.3 s): each is a bucket boundary of the engine's in-kernel
log-linear histogram, so the cumulative counts are exact. Per probe the loss counters and state; for the
agent its health and the usual ``process_*`` metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mace_agent import histogram
from mace_agent.node.results import DIRECTION_KEYS
from mace_agent.node.runs import ATTACHING, ERROR, MEASURING, STOPPED, ProbeRun

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LE_EXPONENTS = range(10, 33)
STATES = (ATTACHING, MEASURING, ERROR, STOPPED)
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class AgentHealth:
    """What ``/metrics`` reports about the agent itself."""

    node: str
    connected: bool
    synced: bool
    watch_errors: int
    status_writes: int
    status_write_errors: int
    event_subscribers: int
    events_lost: int


def escape(value: str) -> str:
    """A label value as the exposition format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


def _seconds(ns: int) -> str:
    return repr(ns / 1e9)


def cumulative_buckets(counts: Iterable[int]) -> list[tuple[int, int]]:
    """(upper bound in ns, cumulative count) for every ``le`` bound, from the engine's buckets."""
    limits = [1 << e for e in LE_EXPONENTS]
    totals = [0] * len(limits)
    for bucket, n in enumerate(counts):
        if n:
            _low, high = histogram.bounds(bucket)
            for i, limit in enumerate(limits):
                if high <= limit:
                    totals[i] += n
    return list(zip(limits, totals, strict=True))


class Exposition:
    """Collects samples by metric family (the format wants each family's samples together) and renders."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._families.setdefault(name, (kind, help_text, []))

    def sample(self, name: str, labels: Mapping[str, str], value: float | str, family: str = "") -> None:
        self._families[family or name][2].append(f"{name}{_labels(labels)} {value}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def _process(out: Exposition) -> None:
    with open("/proc/self/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    with open("/proc/self/statm", encoding="ascii") as handle:
        resident = int(handle.read().split()[1]) * _PAGE
    with open("/proc/stat", encoding="ascii") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    out.family("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.")
    out.sample("process_cpu_seconds_total", {}, (int(fields[11]) + int(fields[12])) / _TICKS)
    out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
    out.sample("process_resident_memory_bytes", {}, resident)
    out.family("process_start_time_seconds", "gauge", "Start time of the process since the epoch in seconds.")
    out.sample("process_start_time_seconds", {}, boot + int(fields[19]) / _TICKS)
    out.family("process_open_fds", "gauge", "Number of open file descriptors.")
    out.sample("process_open_fds", {}, len(os.listdir("/proc/self/fd")))


def _probe(out: Exposition, key: str, run: ProbeRun) -> None:
    namespace, name = key.split("/", 1)
    base = {"namespace": namespace, "probe": name}
    out.family("mace_probe_state", "gauge", "1 for the state the probe's run is in on this node.")
    for state in STATES:
        out.sample("mace_probe_state", {**base, "state": state}, int(run.state == state))
    if run.attach_seconds is not None:
        out.family("mace_probe_attach_seconds", "gauge", "Seconds taken to compile and attach.")
        out.sample("mace_probe_attach_seconds", base, round(run.attach_seconds, 3))
    snap = run.snapshot
    if snap is None:
        return
    family = "mace_probe_latency_seconds"
    out.family(family, "histogram", "Per-packet latency between the process's socket call and the device.")
    for engine_dir, direction in DIRECTION_KEYS:
        labels = {**base, "direction": direction}
        # Counts come from the histogram itself (the kernel's counters are read a moment apart from it).
        total = sum(snap.histograms[engine_dir])
        for limit, count in cumulative_buckets(snap.histograms[engine_dir]):
            out.sample(f"{family}_bucket", {**labels, "le": _seconds(limit)}, count, family)
        out.sample(f"{family}_bucket", {**labels, "le": "+Inf"}, total, family)
        out.sample(f"{family}_sum", labels, _seconds(snap.counters[f"{engine_dir}_sum"]), family)
        out.sample(f"{family}_count", labels, total, family)
    counters = (("mace_probe_unmatched_total", "Packets seen at one end only (expired or evicted).",
                 snap.unmatched),
                ("mace_probe_dropped_total", "Measured packets whose event was lost (buffers full).",
                 snap.dropped),
                ("mace_probe_rate_limited_total", "Events over the probe's maxEventsPerSecond.",
                 snap.counters["rate_limited"]))
    for metric, help_text, value in counters:
        out.family(metric, "counter", help_text)
        out.sample(metric, base, value)


def render(runs: Mapping[str, ProbeRun], health: AgentHealth) -> str:
    """The whole ``/metrics`` page."""
    out = Exposition()
    out.family("mace_agent_info", "gauge", "The node this agent serves.")
    out.sample("mace_agent_info", {"node": health.node}, 1)
    out.family("mace_agent_api_connected", "gauge", "1 while the LatencyProbe watch is established.")
    out.sample("mace_agent_api_connected", {}, int(health.connected))
    out.family("mace_agent_synced", "gauge", "1 once the first list of LatencyProbes was applied.")
    out.sample("mace_agent_synced", {}, int(health.synced))
    out.family("mace_agent_probes", "gauge", "Probe runs on this node by state.")
    for state in STATES:
        out.sample("mace_agent_probes", {"state": state}, sum(r.state == state for r in runs.values()))
    for metric, help_text, value in (
            ("mace_agent_watch_errors_total", "Failed LatencyProbe lists or watches.", health.watch_errors),
            ("mace_agent_status_writes_total", "status.results patches written.", health.status_writes),
            ("mace_agent_status_write_errors_total", "status.results patches that failed.",
             health.status_write_errors),
            ("mace_agent_events_lost_total", "Events slow /events clients missed.", health.events_lost)):
        out.family(metric, "counter", help_text)
        out.sample(metric, {}, value)
    out.family("mace_agent_event_streams", "gauge", "Open /events streams.")
    out.sample("mace_agent_event_streams", {}, health.event_subscribers)
    out.family("mace_agent_scrape_timestamp_seconds", "gauge", "When this page was rendered.")
    out.sample("mace_agent_scrape_timestamp_seconds", {}, round(time.time(), 3))
    for key in sorted(runs):
        _probe(out, key, runs[key])
    _process(out)
    return out.text()
