"""Per-packet events from the ring buffer, decoded."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mace.fields import CATALOGUE, Kind
from mace.models import ProtocolFilter
from mace_agent.codegen import DIRECTIONS, EVENT_HEADER, Slot, info_bytes, layout

"""struct event in mace.c, before its info bytes: ts_end, latency, pid, tid, direction."""

InfoValue = int | str


@dataclass(frozen=True)
class Event:
    """One measured packet.

    timestamp_ns is CLOCK_MONOTONIC at the end event (egress: the device transmitted the
    packet; ingress: the receive call returned it). info maps field names to values: numbers
    as ints in host order, addresses as strings.
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


def _value(kind: Kind, raw: bytes) -> InfoValue:
    if kind is Kind.mac:
        return ":".join(f"{b:02x}" for b in raw)
    if kind is Kind.ipv4:
        return str(ipaddress.IPv4Address(raw))
    if kind is Kind.ipv6:
        return str(ipaddress.IPv6Address(raw))
    return int.from_bytes(raw, "big")


class EventDecoder:
    """Turns the raw bytes of one ring-buffer record into an :class:`Event`."""

    def __init__(self, flt: ProtocolFilter) -> None:
        self.size = EVENT_HEADER.size + info_bytes(flt)
        self._info: tuple[tuple[Slot, ...], ...] = (layout(flt.outbound).info, layout(flt.inbound).info)

    def decode(self, raw: bytes) -> Event:
        """Decode one record (raises ValueError if it is not one of this program's events)."""
        if len(raw) < self.size:
            raise ValueError(f"event of {len(raw)} bytes, expected {self.size}")
        ts_end, latency, pid, tid, direction = EVENT_HEADER.unpack_from(raw)
        if direction >= len(DIRECTIONS):
            raise ValueError(f"event with unknown direction {direction}")
        base = EVENT_HEADER.size
        info = {slot.field.value: _value(CATALOGUE[slot.field].kind,
                                         raw[base + slot.offset: base + slot.offset + slot.width])
                for slot in self._info[direction]}
        return Event(DIRECTIONS[direction], latency, ts_end, pid, tid, info)
