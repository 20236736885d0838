"""Standard Kubernetes conditions for a LatencyProbe's status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mace.probe import MAX_MESSAGE_CHARS, ConditionType, Reason


def rfc3339(moment: datetime) -> str:
    """``2025-01-02T03:04:05Z``: UTC, whole seconds (the form Kubernetes writes)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime | None:
    """A datetime from an RFC 3339 string as the API server writes it, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def shorten(message: str) -> str:
    """``message`` cut to the schema's limit."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 3] + "..."


def find(conditions: Sequence[Mapping[str, Any]] | None, kind: ConditionType) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` in a status's list, if any."""
    for condition in conditions or ():
        if condition.get("type") == kind.value:
            return condition
    return None


def condition(
    kind: ConditionType,
    ok: bool,
    reason: Reason,
    message: str,
    *,
    generation: int | None,
    now: datetime,
    previous: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """A condition; ``lastTransitionTime`` is kept from ``previous`` unless the status flips."""
    status = "True" if ok else "False"
    before = find(previous, kind)
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        since = str(before["lastTransitionTime"])
    else:
        since = rfc3339(now)
    built: dict[str, Any] = {
        "type": kind.value,
        "status": status,
        "reason": reason.value,
        "message": shorten(message),
        "lastTransitionTime": since,
    }
    if generation is not None:
        built["observedGeneration"] = generation
    return built
