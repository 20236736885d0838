"""What an engine has measured so far: per-direction summaries, histograms and counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mace_agent import histogram
from mace_agent.program import DIRECTIONS

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencySummary:
    """Latency summary of one direction; ``exact`` tells whether percentiles come from every
    value (all events seen in user space) or from the in-kernel histogram."""

    count: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int
    mean_ns: int
    exact: bool

    @classmethod
    def build(cls, count: int, total: int, maximum: int, buckets: Sequence[int],
              values: Sequence[int] | None) -> LatencySummary:
        """From the kernel's count/sum/max and histogram, and the exact values when complete."""
        exact = values is not None and len(values) == count
        if exact and values is not None:
            ordered = sorted(values)
            p50, p90, p99 = (histogram.exact_percentile(ordered, p) for p in PERCENTILES)
        else:
            p50, p90, p99 = (histogram.histogram_percentile(buckets, p, maximum) for p in PERCENTILES)
        return cls(count, p50, p90, p99, maximum, total // count if count else 0, exact)

    def to_dict(self) -> dict[str, int]:
        """The CLI's JSON form: count, p50_ns, p90_ns, p99_ns, max_ns."""
        return {"count": self.count, "p50_ns": self.p50_ns, "p90_ns": self.p90_ns,
                "p99_ns": self.p99_ns, "max_ns": self.max_ns}


@dataclass(frozen=True)
class Snapshot:
    """State of an engine at one moment.

    counters: the kernel's counters (see layout.PROBE_COUNTERS and GROUP_COUNTERS) plus
    ``out_expired``/``in_expired`` (pending packets never matched within the TTL),
    ``out_pending``/``in_pending`` (waiting now) and ``out_evicted``/``in_evicted`` (pushed out of
    the pending table by newer packets).
    """

    directions: Mapping[str, LatencySummary]
    histograms: Mapping[str, tuple[int, ...]]
    counters: Mapping[str, int]

    @property
    def unmatched(self) -> int:
        """Packets seen at one end that never showed up at the other (expired or evicted)."""
        c = self.counters
        return sum(c[f"{d}_expired"] + c[f"{d}_evicted"] for d in DIRECTIONS)

    @property
    def dropped(self) -> int:
        """Measured packets whose event was lost (ring buffer full, receive batch full)."""
        return self.counters["ringbuf_dropped"] + self.counters["in_batch_overflow"]

    def since(self, earlier: Snapshot) -> dict[str, LatencySummary]:
        """Per-direction summaries of the packets measured between ``earlier`` and this snapshot
        (from the histograms; max is the top of the highest bucket, capped at the overall max)."""
        result = {}
        for d in DIRECTIONS:
            counts = [a - b for a, b in zip(self.histograms[d], earlier.histograms[d], strict=True)]
            overall = self.directions[d].max_ns
            top = max((i for i, n in enumerate(counts) if n), default=None)
            maximum = 0 if top is None else min(histogram.bounds(top)[1] - 1, overall)
            total = self.counters[f"{d}_sum"] - earlier.counters[f"{d}_sum"]
            result[d] = LatencySummary.build(sum(counts), total, maximum, counts, None)
        return result

    def to_dict(self) -> dict[str, object]:
        """The summary object the CLI prints (stop_reason is added by the caller)."""
        result: dict[str, object] = {d: self.directions[d].to_dict() for d in DIRECTIONS}
        result["unmatched"] = self.unmatched
        result["dropped"] = self.dropped
        result["rate_limited"] = self.counters["rate_limited"]
        result["percentiles"] = {d: "exact" if self.directions[d].exact else "histogram" for d in DIRECTIONS}
        result["counters"] = dict(self.counters)
        return result
