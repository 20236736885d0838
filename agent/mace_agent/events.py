"""Per-packet events from the ring buffer, decoded (``struct event``: mace_agent/layout.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mace_agent.flows import InfoValue


@dataclass(frozen=True)
class Event:
    """One measured packet.

    timestamp_ns is CLOCK_MONOTONIC at the end event (egress: the device transmitted the
    packet; ingress: the receive call returned it). proc_id and thread_id are the process and
    thread that sent or received it (root PID namespace). info maps field names to values:
    numbers as ints in host order, addresses as strings.
    """

    direction: str
    latency_ns: int
    timestamp_ns: int
    proc_id: int
    thread_id: int
    info: dict[str, InfoValue]

    def to_dict(self) -> dict[str, object]:
        """The JSON form the CLI prints (thread_id is left out)."""
        return {"direction": self.direction, "latency_ns": self.latency_ns,
                "timestamp_ns": self.timestamp_ns, "proc_id": self.proc_id, "info": self.info}
