"""Reading the agent's JSON events: typed access to info values and a shape check."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]
EVENT_KEYS = {"direction", "latency_ns", "timestamp_ns", "proc_id", "info"}


def info_int(event: Record, field: str) -> int:
    """An integer info value: JSON numbers as they are, strings parsed as hex (with or without 0x)."""
    value = event["info"][field]
    if isinstance(value, bool):
        raise TypeError(f"{field} is a boolean")
    if isinstance(value, int):
        return value
    return int(str(value), 16)


def info_values(events: Iterable[Record], field: str) -> list[int]:
    """``info_int(e, field)`` of each event, in order."""
    return [info_int(e, field) for e in events]


def shape_problems(event: Record) -> list[str]:
    """What is wrong with one per-packet event's shape (empty when it follows the CLI contract)."""
    problems = [f"missing {key}" for key in sorted(EVENT_KEYS - event.keys())]
    if event.get("direction") not in ("out", "in"):
        problems.append(f"direction {event.get('direction')!r}")
    for key in ("latency_ns", "timestamp_ns", "proc_id"):
        value = event.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{key} {value!r} is not a non-negative integer")
    if not isinstance(event.get("info"), dict):
        problems.append("info is not an object")
    return problems
