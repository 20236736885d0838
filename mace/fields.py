"""The field catalogue: every packet field a Protocol Filter may name.

One table, used by the models (field names), the safety rules (protocols, observability),
the eBPF engine (where to read each field in a packet) and the docs (rendered table).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Field(StrEnum):
    """Names of the packet fields a flow spec may list (the seed's names kept)."""

    eth_src_addr = "eth_src_addr"
    eth_dst_addr = "eth_dst_addr"
    eth_proto = "eth_proto"
    ip_src_addr = "ip_src_addr"
    ip_dst_addr = "ip_dst_addr"
    ip_proto = "ip_proto"
    ip_id = "ip_id"
    ip6_src_addr = "ip6_src_addr"
    ip6_dst_addr = "ip6_dst_addr"
    ip6_next_header = "ip6_next_header"
    ip6_flow_label = "ip6_flow_label"
    icmp_type = "icmp_type"
    icmp_id = "icmp_id"
    icmp_seq = "icmp_seq"
    icmp6_type = "icmp6_type"
    icmp6_id = "icmp6_id"
    icmp6_seq = "icmp6_seq"
    udp_src_port = "udp_src_port"
    udp_dst_port = "udp_dst_port"
    udp_payload = "udp_payload"
    tcp_src_port = "tcp_src_port"
    tcp_dst_port = "tcp_dst_port"
    tcp_seq = "tcp_seq"
    tcp_ack = "tcp_ack"


ALIASES: dict[str, Field] = {"ip_prot0": Field.ip_proto}
"""Other spellings accepted on input (the seed's grammar writes ``ip_prot0``)."""


class Header(StrEnum):
    """The protocol header a field is read from; it implies what the packet must carry."""

    eth = "eth"
    ipv4 = "ipv4"
    ipv6 = "ipv6"
    icmp = "icmp"
    icmp6 = "icmp6"
    udp = "udp"
    tcp = "tcp"


class End(StrEnum):
    """Where a field can be observed with the same value.

    ``process``: at the event in the process's own context (the packet as the pod's
    interface sees it); ``device``: at the outer device.
    """

    process = "process"
    device = "device"


class Kind(StrEnum):
    """How a field's value is shown to users."""

    mac = "mac"
    ipv4 = "ipv4"
    ipv6 = "ipv6"
    uint = "uint"
    hex = "hex"


BOTH = frozenset({End.process, End.device})
DEVICE_ONLY = frozenset({End.device})


@dataclass(frozen=True)
class FieldInfo:
    """One catalogue row: where a field sits in a packet and what it can be used for."""

    field: Field
    layer: str
    header: Header
    offset: int
    width: int
    kind: Kind
    ends: frozenset[End]
    per_packet: bool
    description: str
    mask: int | None = None

    @property
    def location(self) -> str:
        """Human-readable position, e.g. ``ipv4 header, bytes 4-5``."""
        last = self.offset + self.width - 1
        span = f"byte {self.offset}" if last == self.offset else f"bytes {self.offset}-{last}"
        masked = f" & {self.mask:#x}" if self.mask is not None else ""
        return f"{self.header.value} header, {span}{masked}"


def _row(
    field: Field,
    layer: str,
    header: Header,
    offset: int,
    width: int,
    kind: Kind,
    description: str,
    *,
    ends: frozenset[End] = BOTH,
    per_packet: bool = False,
    mask: int | None = None,
) -> FieldInfo:
    return FieldInfo(field, layer, header, offset, width, kind, ends, per_packet, description, mask)


CATALOGUE: dict[Field, FieldInfo] = {
    row.field: row
    for row in (
        _row(Field.eth_src_addr, "L2", Header.eth, 6, 6, Kind.mac,
             "Ethernet source address; rewritten at each routed hop, so only seen at the device",
             ends=DEVICE_ONLY),
        _row(Field.eth_dst_addr, "L2", Header.eth, 0, 6, Kind.mac,
             "Ethernet destination address; rewritten at each routed hop, so only seen at the device",
             ends=DEVICE_ONLY),
        _row(Field.eth_proto, "L2", Header.eth, 12, 2, Kind.hex,
             "EtherType of the frame (0x0800 IPv4, 0x86dd IPv6)"),
        _row(Field.ip_src_addr, "L3", Header.ipv4, 12, 4, Kind.ipv4,
             "IPv4 source address (differs at the two ends if the node NATs the pod)"),
        _row(Field.ip_dst_addr, "L3", Header.ipv4, 16, 4, Kind.ipv4,
             "IPv4 destination address (differs at the two ends if the node NATs the pod)"),
        _row(Field.ip_proto, "L3", Header.ipv4, 9, 1, Kind.uint,
             "IPv4 protocol number (1 ICMP, 6 TCP, 17 UDP); the seed's ip_prot0"),
        _row(Field.ip_id, "L3", Header.ipv4, 4, 2, Kind.uint,
             "IPv4 identification; set by the kernel per packet, kept by forwarding",
             per_packet=True),
        _row(Field.ip6_src_addr, "L3", Header.ipv6, 8, 16, Kind.ipv6, "IPv6 source address"),
        _row(Field.ip6_dst_addr, "L3", Header.ipv6, 24, 16, Kind.ipv6, "IPv6 destination address"),
        _row(Field.ip6_next_header, "L3", Header.ipv6, 6, 1, Kind.uint,
             "IPv6 next header (58 ICMPv6, 6 TCP, 17 UDP); extension headers are not followed"),
        _row(Field.ip6_flow_label, "L3", Header.ipv6, 0, 4, Kind.uint,
             "IPv6 flow label (20 bits); constant for a flow", mask=0x000FFFFF),
        _row(Field.icmp_type, "L4", Header.icmp, 0, 1, Kind.uint,
             "ICMP type (8 echo request, 0 echo reply)"),
        _row(Field.icmp_id, "L4", Header.icmp, 4, 2, Kind.uint,
             "ICMP echo identifier (the socket's port for ICMP datagram sockets)"),
        _row(Field.icmp_seq, "L4", Header.icmp, 6, 2, Kind.uint,
             "ICMP echo sequence number", per_packet=True),
        _row(Field.icmp6_type, "L4", Header.icmp6, 0, 1, Kind.uint,
             "ICMPv6 type (128 echo request, 129 echo reply)"),
        _row(Field.icmp6_id, "L4", Header.icmp6, 4, 2, Kind.uint, "ICMPv6 echo identifier"),
        _row(Field.icmp6_seq, "L4", Header.icmp6, 6, 2, Kind.uint,
             "ICMPv6 echo sequence number", per_packet=True),
        _row(Field.udp_src_port, "L4", Header.udp, 0, 2, Kind.uint, "UDP source port"),
        _row(Field.udp_dst_port, "L4", Header.udp, 2, 2, Kind.uint, "UDP destination port"),
        _row(Field.udp_payload, "L4", Header.udp, 8, 8, Kind.hex,
             "First 8 bytes of the UDP payload, zero-padded (per packet where the application "
             "puts a sequence number or request id there, as DNS does)", per_packet=True),
        _row(Field.tcp_src_port, "L4", Header.tcp, 0, 2, Kind.uint, "TCP source port"),
        _row(Field.tcp_dst_port, "L4", Header.tcp, 2, 2, Kind.uint, "TCP destination port"),
        _row(Field.tcp_seq, "L4", Header.tcp, 4, 4, Kind.uint,
             "TCP sequence number of a data segment", per_packet=True),
        _row(Field.tcp_ack, "L4", Header.tcp, 8, 4, Kind.uint,
             "TCP acknowledgement number (shared by consecutive segments)"),
    )
}

FAMILY: dict[Header, Header | None] = {
    Header.eth: None,
    Header.ipv4: Header.ipv4,
    Header.ipv6: Header.ipv6,
    Header.icmp: Header.ipv4,
    Header.icmp6: Header.ipv6,
    Header.udp: None,
    Header.tcp: None,
}
"""The network family a header implies (None: either)."""

TRANSPORT: dict[Header, Header | None] = {
    Header.eth: None,
    Header.ipv4: None,
    Header.ipv6: None,
    Header.icmp: Header.icmp,
    Header.icmp6: Header.icmp6,
    Header.udp: Header.udp,
    Header.tcp: Header.tcp,
}
"""The transport protocol a header implies (None: any)."""

ORDER: dict[Field, int] = {f: i for i, f in enumerate(Field)}
"""Canonical position of each field (catalogue order: L2, then L3, then L4)."""


def lookup(name: str) -> Field | None:
    """The field a name (or alias) denotes, or None if it is not in the catalogue."""
    if name in ALIASES:
        return ALIASES[name]
    try:
        return Field(name)
    except ValueError:
        return None
