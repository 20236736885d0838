"""An agent's ``/metrics`` page, parsed with prometheus_client's parser into what the views show.

Only metric names and labels are relied on (``mace_probe_latency_seconds`` per ``namespace``, ``probe`` and
``direction``; the per-probe loss counters; ``mace_probe_state``), not the page's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "mace_probe_latency_seconds"
LOSS_COUNTERS = {"unmatched": "mace_probe_unmatched_total", "dropped": "mace_probe_dropped_total",
                 "rate_limited": "mace_probe_rate_limited_total"}
STATE = "mace_probe_state"
DIRECTIONS = ("egress", "ingress")

ProbeKey = tuple[str, str]
"""(namespace, probe name)."""


@dataclass(frozen=True)
class Histogram:
    """A cumulative Prometheus histogram: ascending upper bounds in seconds (the last is +Inf)."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]

    @property
    def count(self) -> int:
        return int(self.cumulative[-1]) if self.cumulative else 0

    def minus(self, earlier: Histogram | None) -> Histogram:
        """What was added since ``earlier`` (a scrape of the same series); all of it if ``earlier`` is
        None or has other bounds or more samples (the run restarted)."""
        if earlier is None or earlier.bounds != self.bounds or earlier.count > self.count:
            return self
        return Histogram(self.bounds, tuple(now - then for now, then in
                                            zip(self.cumulative, earlier.cumulative, strict=True)))

    def buckets(self) -> list[tuple[float, float, int]]:
        """(lower bound, upper bound, samples) of each bucket, in seconds, not cumulative."""
        rows, low, below = [], 0.0, 0.0
        for bound, total in zip(self.bounds, self.cumulative, strict=True):
            rows.append((low, bound, int(total - below)))
            low, below = bound, total
        return rows

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, interpolated linearly inside its bucket as Prometheus's
        ``histogram_quantile`` does; None without samples; the highest finite bound if it lies above."""
        if not self.count:
            return None
        rank, below = q * self.count, 0
        for low, high, n in self.buckets():
            if n and rank <= below + n:
                return low if math.isinf(high) else low + (high - low) * (rank - below) / n
            below += n
        return None

    def top(self) -> float | None:
        """Upper bound (seconds) of the highest bucket holding a sample: the maximum, rounded up."""
        found = [high if not math.isinf(high) else low for low, high, n in self.buckets() if n]
        return found[-1] if found else None


@dataclass
class ProbeMetrics:
    """One probe's series on one agent."""

    latency: dict[str, Histogram] = field(default_factory=dict)
    loss: dict[str, int] = field(default_factory=dict)
    state: str | None = None


def parse(text: str) -> dict[ProbeKey, ProbeMetrics]:
    """Every probe's latency histograms, loss counters and state on one ``/metrics`` page."""
    probes: dict[ProbeKey, ProbeMetrics] = {}
    buckets: dict[tuple[ProbeKey, str], list[tuple[float, float]]] = {}
    counters = {name: key for key, name in LOSS_COUNTERS.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "namespace" not in labels or "probe" not in labels:
                continue
            key = (labels["namespace"], labels["probe"])
            if sample.name == f"{LATENCY}_bucket" and labels.get("direction") in DIRECTIONS:
                buckets.setdefault((key, labels["direction"]), []).append((float(labels["le"]), sample.value))
            elif sample.name in counters:
                probes.setdefault(key, ProbeMetrics()).loss[counters[sample.name]] = int(sample.value)
            elif sample.name == STATE and sample.value == 1:
                probes.setdefault(key, ProbeMetrics()).state = labels.get("state")
    for (key, direction), points in buckets.items():
        points.sort()
        probes.setdefault(key, ProbeMetrics()).latency[direction] = Histogram(
            tuple(b for b, _ in points), tuple(v for _, v in points))
    return probes
