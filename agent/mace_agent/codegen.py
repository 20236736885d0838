"""Specialising the eBPF program to one Protocol Filter.

The C source (agent/bpf/mace.c) is fixed; this module writes the prelude that it expects:
the target, struct offsets from BTF, sizes, and per direction the required IP family and
transport plus the code copying each flow spec field out of a packet. The layouts returned
here are also what user space uses to decode the info bytes of an event.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from struct import Struct

from mace.fields import CATALOGUE, FAMILY, TRANSPORT, Field, Header
from mace.models import FlowSpec, ProtocolFilter
from mace.safety import MAX_CORR_BYTES
from mace_agent import histogram
from mace_agent.btf import BTF, BTFError
from mace_agent.config import EngineConfig

CORR_BYTES = MAX_CORR_BYTES
EVENT_HEADER = Struct("<QQIIB7x")
"""The fixed part of mace.c's ``struct event`` (ts_end, latency, pid, tid, direction); info follows."""
RX_SLOTS = 16
"""Packets one receive call can report (more are counted as ``in_batch_overflow``)."""
TCP_CHAIN = 64
"""Merged TCP segments one copied skb can account for."""
PENDING_WAYS = 4
"""Ways per set of the pending-packet tables (see mace.c and mace_agent/pending.py)."""
PKT_HDR_BYTES = 64
"""Bytes from the network header that parse_l3 reads in one go (mace.c's ``struct pkt``)."""

DIRECTIONS = ("out", "in")
COUNTERS = (
    "out_inserted", "out_matched", "in_inserted", "in_matched", "in_duplicate",
    "ringbuf_dropped", "rate_limited", "in_batch_overflow",
    "out_count", "out_sum", "out_max", "in_count", "in_sum", "in_max",
)
"""Per-CPU counters, in map order (``*_max`` are maxima, the rest sums)."""

CONTROL_STREAM = 0
CONTROL_RATE = 1

_BASE = {
    Header.eth: "p->l2", Header.ipv4: "p->l3", Header.ipv6: "p->l3",
    Header.icmp: "p->l4", Header.icmp6: "p->l4", Header.udp: "p->l4", Header.tcp: "p->l4",
}
_FAMILY_NUMBER = {Header.ipv4: 4, Header.ipv6: 6}
_TRANSPORT_NUMBER = {Header.icmp: 1, Header.icmp6: 58, Header.udp: 17, Header.tcp: 6}


@dataclass(frozen=True)
class Slot:
    """Where one field's bytes sit inside a packed buffer (packet id or info bytes)."""

    field: Field
    offset: int
    width: int


@dataclass(frozen=True)
class FlowLayout:
    """What one direction's program requires of a packet and how it packs the fields."""

    family: int  # 0: IPv4 or IPv6
    transport: int  # IP protocol number; 0: any
    corr: tuple[Slot, ...]
    info: tuple[Slot, ...]



def _pack(fields: tuple[Field, ...]) -> tuple[Slot, ...]:
    slots = []
    offset = 0
    for f in fields:
        width = CATALOGUE[f].width
        slots.append(Slot(f, offset, width))
        offset += width
    return tuple(slots)


def layout(spec: FlowSpec) -> FlowLayout:
    """The packet requirements and packing of a (validated) flow spec."""
    family = transport = 0
    for f in (*spec.corr, *spec.info):
        header = CATALOGUE[f].header
        implied_family = FAMILY[header]
        implied_transport = TRANSPORT[header]
        if implied_family is not None:
            family = _FAMILY_NUMBER[implied_family]
        if implied_transport is not None:
            transport = _TRANSPORT_NUMBER[implied_transport]
    return FlowLayout(family, transport, _pack(spec.corr), _pack(spec.info))


def udp_claim(flt: ProtocolFilter) -> bool:
    """Whether ingress may be UDP, which needs the socket-queue hooks (see mace.c)."""
    return layout(flt.inbound).transport in (0, _TRANSPORT_NUMBER[Header.udp])


def tcp_seq_offset(flt: ProtocolFilter) -> int:
    """Where tcp_seq sits in the ingress packet id (-1: not there; merged segments are then
    reported only through the first one)."""
    return next((s.offset for s in layout(flt.inbound).corr if s.field is Field.tcp_seq), -1)


@dataclass(frozen=True)
class KernelHooks:
    """Which optional tracepoints the running kernel has (the defaults: a recent kernel's)."""

    sock_recv_length: bool = True
    """Where the socket layer returns to any receive call (Linux 6.3 on). Without it, packets
    are taken only inside recvfrom/recvmsg/recvmmsg, and UDP cannot be measured."""
    tcp_sendmsg_locked: bool = True
    """Where TCP starts queueing a send's data: TCP sent by write() or writev() is
    measured from there."""

    @classmethod
    def detect(cls, exists: Callable[[str, str], bool]) -> KernelHooks:
        """The hooks for which ``exists(category, event)`` says the tracepoint is there."""
        return cls(sock_recv_length=exists("sock", "sock_recv_length"),
                   tcp_sendmsg_locked=exists("tcp", "tcp_sendmsg_locked"))


def tcp_send_hook(flt: ProtocolFilter, hooks: KernelHooks) -> bool:
    """Whether the program for ``flt`` also starts TCP sends where TCP queues their data."""
    return hooks.tcp_sendmsg_locked and layout(flt.outbound).transport in (0, _TRANSPORT_NUMBER[Header.tcp])


def sock_recv_hook(flt: ProtocolFilter, hooks: KernelHooks) -> bool:
    """Whether the program for ``flt`` reports received packets where the socket layer returns
    (always for UDP, which needs it: the engine then refuses kernels without it)."""
    return hooks.sock_recv_length or udp_claim(flt)


def tracepoints(flt: ProtocolFilter, hooks: KernelHooks = KernelHooks()) -> tuple[str, ...]:
    """The ``category:event`` tracepoints the program for ``flt`` attaches to on a kernel with ``hooks``."""
    sock_recv = sock_recv_hook(flt, hooks)
    calls = ["sendto", "sendmsg", "sendmmsg"]
    if udp_claim(flt) or not sock_recv:  # see mace.c: the receive system calls
        calls += ["recvfrom", "recvmsg", "recvmmsg"]
    names = [f"syscalls:sys_{edge}_{call}" for call in calls for edge in ("enter", "exit")]
    names += ["net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit", "net:netif_receive_skb",
              "skb:skb_copy_datagram_iovec"]
    if sock_recv:
        names += ["sock:sock_recv_length"]
    if udp_claim(flt):
        names += ["sock:sk_data_ready"]
    if tcp_send_hook(flt, hooks):
        names += ["tcp:tcp_sendmsg_locked", "sock:sock_send_length"]
    return tuple(names)


def info_bytes(flt: ProtocolFilter) -> int:
    """Size of every info buffer (both directions): a multiple of 8, at least 8."""
    used = max(sum(s.width for s in layout(spec).info) for spec in (flt.outbound, flt.inbound))
    return max(8, (used + 7) // 8 * 8)


_OFFSETS: dict[str, tuple[str, str, int]] = {
    "skb_head": ("sk_buff", "head", 8),
    "skb_data": ("sk_buff", "data", 8),
    "skb_network_header": ("sk_buff", "network_header", 2),
    "skb_mac_header": ("sk_buff", "mac_header", 2),
    "skb_protocol": ("sk_buff", "protocol", 2),
    "skb_dev": ("sk_buff", "dev", 8),
    "skb_iif": ("sk_buff", "skb_iif", 4),
    "skb_len": ("sk_buff", "len", 4),
    "dev_ifindex": ("net_device", "ifindex", 4),
    "dev_net": ("net_device", "nd_net.net", 8),
    "net_inum": ("net", "ns.inum", 4),
    "task_files": ("task_struct", "files", 8),
    "files_fdt": ("files_struct", "fdt", 8),
    "fdtable_max_fds": ("fdtable", "max_fds", 4),
    "fdtable_fd": ("fdtable", "fd", 8),
    "file_private_data": ("file", "private_data", 8),
    "socket_sk": ("socket", "sk", 8),
    "sock_protocol": ("sock", "sk_protocol", 2),
    "sock_receive_queue_next": ("sock", "sk_receive_queue.next", 8),
    "sock_receive_queue_prev": ("sock", "sk_receive_queue.prev", 8),
    "sock_receive_queue_qlen": ("sock", "sk_receive_queue.qlen", 4),
    "udp_reader_queue_next": ("udp_sock", "reader_queue.next", 8),
    "udp_reader_queue_qlen": ("udp_sock", "reader_queue.qlen", 4),
}
"""Every kernel struct member the program reads: name -> (struct, member path, size)."""


@dataclass(frozen=True)
class KernelOffsets:
    """Byte offsets of the kernel struct members the program reads (from BTF), by _OFFSETS name."""

    offsets: dict[str, int]

    @classmethod
    def from_btf(cls, btf: BTF) -> KernelOffsets:
        """Resolve every offset, checking the member sizes the program assumes."""
        found = {}
        for name, (struct, path, size) in _OFFSETS.items():
            member = btf.member(struct, path)
            if member.size != size:
                raise BTFError(f"{struct}.{path} is {member.size} bytes, expected {size}")
            found[name] = member.offset
        return cls(found)

    def defines(self) -> dict[str, int]:
        """The ``OFF_*`` macros."""
        return {f"OFF_{name.upper()}": offset for name, offset in self.offsets.items()}

    def skb_span(self) -> tuple[int, int]:
        """(start, length) of the one read covering the sk_buff members parsed per packet."""
        names = ("skb_head", "skb_data", "skb_network_header", "skb_mac_header", "skb_protocol")
        members = [(self.offsets[name], _OFFSETS[name][2]) for name in names]
        start = min(offset for offset, _ in members) // 8 * 8
        end = max(offset + size for offset, size in members)
        length = (end - start + 7) // 8 * 8
        if length > 128:
            raise BTFError(f"sk_buff header members span {length} bytes; at most 128 supported")
        return start, length


def _header_sources(header: Header, offset: int, width: int) -> list[tuple[str, int]]:
    """Where in ``p->hdr`` (the bytes parse_l3 read from the network header) a field may lie:
    (C condition, start) pairs. IP fields are at fixed offsets; transport fields depend on the
    IP header's length, covered for IPv4 without options and IPv6 without extension headers."""
    if _BASE[header] == "p->l3":
        starts = [("", offset)]
    elif _BASE[header] == "p->l4":
        starts = [(f"p->l4off == {l4off} && ", l4off + offset) for l4off in (20, 40)]
    else:
        return []
    return [(f"{condition}p->hdr_len >= {start + width}", start) for condition, start in starts
            if start + width <= PKT_HDR_BYTES]


def _copy_code(name: str, slots: tuple[Slot, ...], *, required: bool) -> str:
    """A C function copying fields into ``buf``; corr copies fail the packet, info ones zero-fill.

    Fields within the header bytes already read are copied from there; others are read from
    the packet."""
    kind = "int" if required else "void"
    lines = [f"static __always_inline {kind} {name}(const struct pkt *p, u8 *buf)", "{"]
    for slot in slots:
        info = CATALOGUE[slot.field]
        base = _BASE[info.header]
        keyword = "if"
        for condition, start in _header_sources(info.header, info.offset, slot.width):
            lines.append(f"    {keyword} ({condition})")
            lines.append(f"        __builtin_memcpy(buf + {slot.offset}, p->hdr + {start}, {slot.width});")
            keyword = "else if"
        read = f"bpf_probe_read_kernel(buf + {slot.offset}, {slot.width}, {base} + {info.offset})"
        indent = "    " if keyword == "if" else "        "
        if keyword != "if":
            lines.append("    else {")
        if required:
            lines.append(f"{indent}if (!{base} || {read})")
            lines.append(f"{indent}    return -1;")
        else:
            lines.append(f"{indent}if ({base} && {read})")
            lines.append(f"{indent}    __builtin_memset(buf + {slot.offset}, 0, {slot.width});")
        if keyword != "if":
            lines.append("    }")
        if info.mask is not None:
            for i, byte in enumerate(info.mask.to_bytes(slot.width, "big")):
                if byte != 0xFF:
                    lines.append(f"    buf[{slot.offset + i}] &= {byte:#04x};")
    if required:
        lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Namespaces:
    """Network namespace inode numbers: the agent's (where dev-id is) and the process's."""

    agent: int
    process: int


def vxlan_test(ports: tuple[int, ...]) -> str:
    """The C expression behind ``VXLAN_PORT(port)``: whether a UDP destination port is VXLAN's."""
    return "(" + (" || ".join(f"(port) == {p}" for p in sorted(set(ports))) or "0") + ")"


def wake_every(flt: ProtocolFilter, config: EngineConfig) -> int:
    """Events a CPU submits before it wakes the reader: together the CPUs fill at most a quarter
    of the ring buffer between wake-ups (a record is the event plus an 8-byte header)."""
    record = EVENT_HEADER.size + 8 + info_bytes(flt)
    cpus = os.cpu_count() or 1
    return max(1, config.ringbuf_pages * os.sysconf("SC_PAGE_SIZE") // (4 * record * cpus))


def prelude(flt: ProtocolFilter, offsets: KernelOffsets, netns: Namespaces, config: EngineConfig,
            hooks: KernelHooks = KernelHooks()) -> str:
    """The generated C definitions that specialise mace.c to ``flt`` on a kernel with ``hooks``."""
    out, inbound = layout(flt.outbound), layout(flt.inbound)
    span_start, span_len = offsets.skb_span()
    defines = {
        "DEV_IFINDEX": flt.dev_id, "NETNS_INUM": f"{netns.agent}U", "PROC_TGID": flt.proc_id,
        "PROC_NETNS_INUM": f"{netns.process}U",
        "SKB_SPAN_START": span_start, "SKB_SPAN_LEN": span_len,
        "CORR_BYTES": CORR_BYTES, "RX_SLOTS": RX_SLOTS,
        "MAP_ENTRIES": config.map_entries, "THREAD_ENTRIES": config.thread_entries,
        "RINGBUF_PAGES": config.ringbuf_pages,
        "HIST_SUB_BITS": histogram.SUB_BITS, "HIST_SUB": histogram.SUB, "HIST_BUCKETS": histogram.BUCKETS,
        "N_COUNTERS": len(COUNTERS), "CONTROL_STREAM": CONTROL_STREAM, "CONTROL_RATE": CONTROL_RATE,
        "DIR_OUT": DIRECTIONS.index("out"), "DIR_IN": DIRECTIONS.index("in"),
        "OUT_FAMILY": out.family, "OUT_L4PROTO": out.transport,
        "IN_FAMILY": inbound.family, "IN_L4PROTO": inbound.transport,
        "INFO_BYTES": info_bytes(flt),
        "PKT_HDR_BYTES": PKT_HDR_BYTES, "PENDING_WAYS": PENDING_WAYS,
        "WAKE_EVERY": wake_every(flt, config),
        "TTL_NS": f"{round(config.ttl_s * 1e9)}ULL",
    }
    defines |= offsets.defines()
    defines["UDP_CLAIM"] = int(udp_claim(flt))
    defines["TCP_SEQ_AT"] = tcp_seq_offset(flt)
    defines["TCP_CHAIN"] = TCP_CHAIN
    defines["TCP_SEND_HOOK"] = int(tcp_send_hook(flt, hooks))
    defines["SOCK_RECV_HOOK"] = int(sock_recv_hook(flt, hooks))
    defines["VXLAN"] = int(bool(config.vxlan_ports))
    defines["VXLAN_PORT(port)"] = vxlan_test(config.vxlan_ports)
    defines |= {f"C_{name.upper()}": i for i, name in enumerate(COUNTERS)}
    parts = [f"#define {name} {value}" for name, value in defines.items()]
    return "\n".join(parts) + "\n"


def functions(flt: ProtocolFilter) -> str:
    """The generated field-copy functions (they need ``struct pkt`` from mace.c)."""
    out, inbound = layout(flt.outbound), layout(flt.inbound)
    return "\n\n".join((
        _copy_code("out_corr", out.corr, required=True),
        _copy_code("out_info", out.info, required=False),
        _copy_code("in_corr", inbound.corr, required=True),
        _copy_code("in_info", inbound.info, required=False),
    )) + "\n"


def program(flt: ProtocolFilter, offsets: KernelOffsets, netns: Namespaces, config: EngineConfig,
            hooks: KernelHooks = KernelHooks()) -> str:
    """The complete C text for bcc: prelude, mace.c with the generated functions spliced in."""
    source = resources.files("mace_agent.bpf").joinpath("mace.c").read_text()
    marker = "/* ---- generated field copies ---- */"
    if marker not in source:
        raise RuntimeError(f"mace.c lacks the marker {marker!r}")
    return prelude(flt, offsets, netns, config, hooks) + source.replace(marker, functions(flt))
