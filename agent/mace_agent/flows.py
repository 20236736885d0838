"""Flow specs as data: each field of the catalogue becomes gather pieces the program follows.

A flow spec's ``corr`` fields are packed side by side into the packet id and its ``info`` fields
into the info bytes. The packed bytes are built a 64-bit word at a time from pieces: a piece takes
up to 8 contiguous bytes of the parsed packet (see mace.c's ``struct pkt``: 16 bytes from the
Ethernet header, then the bytes from the network header; transport bytes are relative to the
transport header), shifts them to their place in one word and masks them. Fields next to each other
in both the packet and the packed bytes share a piece, so a packet id of addresses and ports is two
or three pieces, whatever its width. The same slots decode the info bytes of an event.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from mace.fields import CATALOGUE, FAMILY, TRANSPORT, Field, Header, Kind
from mace.models import FlowSpec
from mace_agent import layout
from mace_agent.layout import (
    CORR_BYTES,
    CORR_PIECES,
    INFO_BYTES,
    INFO_PIECES,
    L2_BYTES,
    L4_SOURCE,
    FlowLayoutC,
)

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
    """The piece source of byte ``byte`` of a field in ``header``."""
    if header is Header.eth:
        return byte
    if header in (Header.ipv4, Header.ipv6):
        return L2_BYTES + byte  # IP fields end by byte 40, well inside the bytes read
    if byte >= MAX_L4_OFFSET:
        raise ValueError(f"transport byte {byte} is beyond the {MAX_L4_OFFSET} the engine reads")
    return L4_SOURCE | byte


@dataclass
class _Piece:
    src: int
    word: int
    lane: int
    length: int = 0
    mask: int = 0


def _pieces(slots: tuple[Slot, ...], limit: int, out: Any) -> int:
    """Fill ``out`` (a ctypes array of PieceC) with the pieces that gather packed ``slots``; their count.

    Byte by byte, a packed byte joins the last piece when it continues it in the same word and
    follows its last byte in the packet, else starts a new piece."""
    pieces: list[_Piece] = []
    for slot in slots:
        info = CATALOGUE[slot.field]
        whole = (1 << (8 * slot.width)) - 1
        masks = (info.mask if info.mask is not None else whole).to_bytes(slot.width, "big")
        for i in range(slot.width):
            src = _source(info.header, info.offset + i)
            word, lane = divmod(slot.offset + i, 8)
            last = pieces[-1] if pieces else None
            if not (last and last.word == word and last.lane + last.length == lane
                    and last.src + last.length == src):
                last = _Piece(src, word, lane)
                pieces.append(last)
            last.mask |= masks[i] << (8 * lane)
            last.length += 1
    if len(pieces) > limit:
        raise ValueError(f"flow spec needs {len(pieces)} gather pieces, over the {limit} the engine has")
    for out_piece, piece in zip(out, pieces, strict=False):
        out_piece.src, out_piece.word, out_piece.shift, out_piece.mask = (
            piece.src, piece.word, 8 * piece.lane, piece.mask)
    return len(pieces)


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
    def reads_l2(self) -> bool:
        """Whether the corr or the info fields take bytes of the Ethernet header."""
        return any(CATALOGUE[s.field].header is Header.eth for s in (*self.corr, *self.info))

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
        value.n_corr = _pieces(self.corr, CORR_PIECES, value.corr)
        value.n_info = _pieces(self.info, INFO_PIECES, value.info)
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
