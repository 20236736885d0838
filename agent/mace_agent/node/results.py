"""``status.results`` of a LatencyProbe, built from a run's state and latest snapshot."""

from __future__ import annotations

from typing import Any

from mace.probe import MAX_MESSAGE_CHARS, DirectionSummary, ProbeResults, ResultsState, Scope
from mace_agent.summary import LatencySummary, Snapshot

DIRECTION_KEYS = (("out", "egress"), ("in", "ingress"))
"""Engine direction -> results/metrics name."""


def human_ns(ns: int) -> str:
    """A latency for people: ``850ns``, ``59.1us``, ``1.2ms``, ``2.35s``."""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def direction(summary: LatencySummary) -> DirectionSummary:
    """One direction's summary in the status's shape (percentiles only once there are samples)."""
    if summary.count == 0:
        return DirectionSummary(count=0)
    return DirectionSummary(count=summary.count, p50_ns=summary.p50_ns, p90_ns=summary.p90_ns,
                            p99_ns=summary.p99_ns, max_ns=summary.max_ns, p50=human_ns(summary.p50_ns))


def results(state: str, message: str | None, node: str, snapshot: Snapshot | None, since: str | None = None,
            *, heartbeat: int | None = None, scope: Scope | None = None,
            targets: int | None = None) -> dict[str, Any]:
    """The ``results`` object (a :class:`~mace.probe.ProbeResults`) without ``updated`` (the publisher
    adds it when it writes); ``since`` is when the snapshot's counting began.

    Absent values are explicit nulls so that a JSON merge patch clears what an earlier write set.
    """
    fields: dict[str, Any] = {}
    if snapshot is not None:
        fields = {name: direction(snapshot.directions[engine_dir]) for engine_dir, name in DIRECTION_KEYS}
        fields |= {"matched": sum(snapshot.directions[d].count for d, _ in DIRECTION_KEYS),
                   "unmatched": snapshot.unmatched, "dropped": snapshot.dropped,
                   "rate_limited": snapshot.counters["rate_limited"], "since": since}
    body = ProbeResults(state=ResultsState(state), message=message and message[:MAX_MESSAGE_CHARS], node=node,
                        heartbeat_seconds=heartbeat, scope=scope, targets=targets, **fields)
    return body.model_dump(mode="json", by_alias=True, exclude={"updated"})
