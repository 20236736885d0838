"""``status.results`` of a LatencyProbe, built from a run's state and latest snapshot."""

from __future__ import annotations

from typing import Any

from mace_agent.summary import DirectionSummary, Snapshot

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


def direction(summary: DirectionSummary) -> dict[str, Any]:
    """One direction's summary in the status's shape (percentiles only once there are samples)."""
    if summary.count == 0:
        return {"count": 0, "p50Ns": None, "p90Ns": None, "p99Ns": None, "maxNs": None, "p50": None}
    return {"count": summary.count, "p50Ns": summary.p50_ns, "p90Ns": summary.p90_ns,
            "p99Ns": summary.p99_ns, "maxNs": summary.max_ns, "p50": human_ns(summary.p50_ns)}


def results(state: str, message: str | None, node: str, snapshot: Snapshot | None,
            since: str | None = None) -> dict[str, Any]:
    """The ``results`` object without ``updated`` (the publisher adds it when it writes); ``since`` is
    when the snapshot's counting began.

    Absent values are explicit nulls so that a JSON merge patch clears what an earlier write set.
    """
    body: dict[str, Any] = {"state": state, "message": message, "node": node,
                            "since": since if snapshot is not None else None}
    if snapshot is None:
        body.update(egress=None, ingress=None, matched=None, unmatched=None, dropped=None, rateLimited=None)
        return body
    for engine_dir, name in DIRECTION_KEYS:
        body[name] = direction(snapshot.directions[engine_dir])
    body["matched"] = sum(snapshot.directions[d].count for d, _ in DIRECTION_KEYS)
    body["unmatched"] = snapshot.unmatched
    body["dropped"] = snapshot.dropped
    body["rateLimited"] = snapshot.counters["rate_limited"]
    return body
