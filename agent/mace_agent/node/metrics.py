"""``/metrics``: the agent's Prometheus metrics, written by prometheus_client from custom collectors.

Per probe and direction a latency histogram (``mace_probe_latency_seconds``), whose ``le`` bounds are the
powers of two from 2^10 ns (~1 us) to 2^32 ns (~4.3 s): each is a bucket boundary of the engine's in-kernel
log-linear histogram, so the cumulative counts are exact. Per probe the loss counters and state; for the
agent its health and prometheus_client's ``process_*`` metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from mace_agent import histogram
from mace_agent.node.results import DIRECTION_KEYS
from mace_agent.node.runs import ATTACHING, ERROR, MEASURING, STOPPED, ProbeRun

CONTENT_TYPE = CONTENT_TYPE_LATEST
LE_EXPONENTS = range(10, 33)
STATES = (ATTACHING, MEASURING, ERROR, STOPPED)


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


def _gauge(name: str, help_text: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


class AgentCollector(Collector):
    """The agent's own metrics and every probe's, read from the runs at scrape time."""

    def __init__(self, runs: Mapping[str, ProbeRun], health: AgentHealth) -> None:
        self.runs = runs
        self.health = health

    def collect(self) -> Iterator[Metric]:
        health, runs = self.health, self.runs
        yield _gauge("mace_agent_info", "The node this agent serves.", 1, node=health.node)
        yield _gauge("mace_agent_api_connected", "1 while the LatencyProbe watch is established.",
                     int(health.connected))
        yield _gauge("mace_agent_synced", "1 once the first list of LatencyProbes was applied.",
                     int(health.synced))
        by_state = GaugeMetricFamily("mace_agent_probes", "Probe runs on this node by state.",
                                     labels=["state"])
        for state in STATES:
            by_state.add_metric([state], sum(r.state == state for r in runs.values()))
        yield by_state
        yield _counter("mace_agent_watch_errors", "Failed LatencyProbe lists or watches.",
                       health.watch_errors)
        yield _counter("mace_agent_status_writes", "status.results patches written.", health.status_writes)
        yield _counter("mace_agent_status_write_errors", "status.results patches that failed.",
                       health.status_write_errors)
        yield _counter("mace_agent_events_lost", "Events slow /events clients missed.", health.events_lost)
        yield _gauge("mace_agent_event_streams", "Open /events streams.", health.event_subscribers)
        yield _gauge("mace_agent_scrape_timestamp_seconds", "When this page was rendered.",
                     round(time.time(), 3))
        yield from self._probes()

    def _probes(self) -> Iterator[Metric]:
        labels = ["namespace", "probe"]
        state = GaugeMetricFamily("mace_probe_state", "1 for the state the probe's run is in on this node.",
                                  labels=[*labels, "state"])
        attach = GaugeMetricFamily(
            "mace_probe_attach_seconds",
            "Seconds from the agent hearing of the probe to its entries in the engine's maps.", labels=labels)
        latency = HistogramMetricFamily(
            "mace_probe_latency_seconds",
            "Per-packet latency between the process's socket call and the device.",
            labels=[*labels, "direction"])
        losses = {name: CounterMetricFamily(name, help_text, labels=labels) for name, help_text in (
            ("mace_probe_unmatched", "Packets seen at one end only (expired or evicted)."),
            ("mace_probe_dropped", "Measured packets whose event was lost (buffers full)."),
            ("mace_probe_rate_limited", "Events over the probe's maxEventsPerSecond."))}
        for key in sorted(self.runs):
            run = self.runs[key]
            base = key.split("/", 1)
            for name in STATES:
                state.add_metric([*base, name], int(run.state == name))
            if run.attach_seconds is not None:
                attach.add_metric(base, round(run.attach_seconds, 6))
            snap = run.snapshot
            if snap is None:
                continue
            for engine_dir, direction in DIRECTION_KEYS:
                # Counts come from the histogram itself (the kernel's counters are read apart from it).
                counts = snap.histograms[engine_dir]
                buckets = [(repr(limit / 1e9), count) for limit, count in cumulative_buckets(counts)]
                buckets.append(("+Inf", sum(counts)))
                latency.add_metric([*base, direction], buckets, snap.counters[f"{engine_dir}_sum"] / 1e9)
            losses["mace_probe_unmatched"].add_metric(base, snap.unmatched)
            losses["mace_probe_dropped"].add_metric(base, snap.dropped)
            losses["mace_probe_rate_limited"].add_metric(base, snap.counters["rate_limited"])
        yield from (state, attach, latency, *losses.values())


def render(runs: Mapping[str, ProbeRun], health: AgentHealth) -> str:
    """The whole ``/metrics`` page."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(runs, health))
    ProcessCollector(registry=registry)
    return generate_latest(registry).decode()
