"""Flow specs as data: each field of the catalogue becomes gather entries the program follows.

A flow spec's ``corr`` fields are packed side by side into the packet id and its ``info`` fields
into the info bytes. For every packed byte, :class:`FlowLayoutC` names the byte of the parsed
packet it comes from (see mace.c's ``struct pkt``: 16 bytes from the Ethernet header, then the
bytes from the network header; transport bytes are relative to the transport header) and a mask.
The same slots decode the info bytes of an event.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from mace.fields import CATALOGUE, FAMILY, TRANSPORT, Field, Header, Kind
from mace.models import FlowSpec
from mace_agent import layout
from mace_agent.layout import CORR_BYTES, INFO_BYTES, L2_BYTES, L4_SOURCE, NO_SOURCE, FlowLayoutC

FAMILY_NUMBER = {Header.ipv4: 4, Header.ipv6: 6}
TRANSPORT_NUMBER = {Header.icmp: 1, Header.icmp6: 58, Header.udp: 17, Header.tcp: 6}
MAX_L4_OFFSET = 16
"""Transport-header bytes a field may reach (udp_payload ends at 16)."""

InfoValue = int | str
_L4_HEADERS = (Header.icmp, Header.icmp6, Header.udp, Header.tcp)


@dataclass(frozen=True)
class Slot:
    """Where one field's bytes sit inside a packed buffer (packet id or info bytes)."""

    field: Field
    offset: int
    width: int


def _pack(fields: tuple[Field, ...]) -> tuple[Slot, ...]:
    slots, offset = [], 0
    for f in fields:
        slots.append(Slot(f, offset, CATALOGUE[f].width))
        offset += CATALOGUE[f].width
    return tuple(slots)


def _source(header: Header, byte: int) -> int:
    """The gather entry for byte ``byte`` of a field in ``header``."""
    if header is Header.eth:
        return byte
    if header in (Header.ipv4, Header.ipv6):
        return L2_BYTES + byte  # IP fields end by byte 40, well inside the bytes read
    if byte >= MAX_L4_OFFSET:
        raise ValueError(f"transport byte {byte} is beyond the {MAX_L4_OFFSET} the engine reads")
    return L4_SOURCE | byte


def _gather(slots: tuple[Slot, ...], size: int, src: Any, mask: Any) -> None:
    """Fill a gather array and its masks (ctypes u8 arrays of ``size``) for packed slots."""
    for i in range(size):
        src[i], mask[i] = NO_SOURCE, 0
    for slot in slots:
        info = CATALOGUE[slot.field]
        whole = (1 << (8 * slot.width)) - 1
        masks = (info.mask if info.mask is not None else whole).to_bytes(slot.width, "big")
        for i in range(slot.width):
            src[slot.offset + i] = _source(info.header, info.offset + i)
            mask[slot.offset + i] = masks[i]


@dataclass(frozen=True)
class FlowLayout:
    """One direction's flow spec, compiled into what the program needs and what decodes events."""

    spec: FlowSpec
    family: int  # 0: IPv4 or IPv6
    transport: int  # IP protocol number; 0: any
    corr: tuple[Slot, ...]
    info: tuple[Slot, ...]

    @classmethod
    def of(cls, spec: FlowSpec) -> FlowLayout:
        """The layout of a (validated) flow spec."""
        family = transport = 0
        for f in (*spec.corr, *spec.info):
            header = CATALOGUE[f].header
            implied_family, implied_transport = FAMILY[header], TRANSPORT[header]
            if implied_family is not None:
                family = FAMILY_NUMBER[implied_family]
            if implied_transport is not None:
                transport = TRANSPORT_NUMBER[implied_transport]
        corr, info = _pack(spec.corr), _pack(spec.info)
        if sum(s.width for s in corr) > CORR_BYTES or sum(s.width for s in info) > INFO_BYTES:
            raise ValueError("flow spec does not fit the packet id or the info bytes")
        return cls(spec, family, transport, corr, info)

    @property
    def tcp_seq_at(self) -> int:
        """Where tcp_seq sits in the packet id (-1: not there; merged TCP segments are then
        reported only through the first one)."""
        return next((s.offset for s in self.corr if s.field is Field.tcp_seq), -1)

    @property
    def may_be_udp(self) -> bool:
        """Whether the packets may be UDP (the receive side then needs the socket-queue hooks)."""
        return self.transport in (0, TRANSPORT_NUMBER[Header.udp])

    @property
    def may_be_tcp(self) -> bool:
        return self.transport in (0, TRANSPORT_NUMBER[Header.tcp])

    def to_c(self) -> FlowLayoutC:
        """The ``struct flow_layout`` the program reads."""
        value = FlowLayoutC()
        value.family, value.l4proto = self.family, self.transport
        value.tcp_seq_at = self.tcp_seq_at if self.tcp_seq_at >= 0 else layout.NO_TCP_SEQ
        value.needs_l2 = int(any(CATALOGUE[s.field].header is Header.eth for s in self.corr))
        value.corr_l4_end = max((CATALOGUE[s.field].offset + s.width for s in self.corr
                                 if CATALOGUE[s.field].header in _L4_HEADERS), default=0)
        _gather(self.corr, CORR_BYTES, value.corr_src, value.corr_mask)
        _gather(self.info, INFO_BYTES, value.info_src, value.info_mask)
        return value

    def decode_info(self, raw: bytes) -> dict[str, InfoValue]:
        """The info fields of an event's info bytes: numbers as ints, addresses as strings."""
        return {s.field.value: _value(CATALOGUE[s.field].kind, raw[s.offset:s.offset + s.width])
                for s in self.info}


def _value(kind: Kind, raw: bytes) -> InfoValue:
    if kind is Kind.mac:
        return ":".join(f"{b:02x}" for b in raw)
    if kind is Kind.ipv4:
        return str(ipaddress.IPv4Address(raw))
    if kind is Kind.ipv6:
        return str(ipaddress.IPv6Address(raw))
    return int.from_bytes(raw, "big")
