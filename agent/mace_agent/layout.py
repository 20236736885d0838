"""The binary layout shared by the eBPF program and user space, defined once.

Every struct that crosses between C and Python (map keys and values, ring-buffer events) is a
ctypes Structure here; :func:`c_definitions` writes the matching C ``struct`` text that the
program (agent/bpf/mace.c) is compiled with, so the two cannot drift apart. The engine checks
each map's key and value sizes against these classes after loading.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Iterator
from typing import Any

MAX_PROBES = 4096
"""Probe slots in the maps (the agent's ``--max-probes`` is at most this)."""
MAX_TARGETS = 8192
"""Cgroups or processes measured at once (a probe may measure several containers)."""
MAX_DEVICES = 64
"""Outer devices measured at once."""
MAX_LAYOUTS = 256
"""Distinct flow layouts (flow specs) in use on the node at once."""
KNOWN_DEVICES = 8
"""Outer devices a device hook recognises by address alone (with more, each packet reads its ifindex)."""
DEV_LAYOUTS = 8
"""Distinct flow layouts per direction on one outer device: the bound on per-packet work there."""
TARGET_GROUPS = 4
"""Distinct (flow layout, device) groups per direction among one target's probes."""
CORR_BYTES = 40
"""The packet id: corr field values packed side by side (mace.safety.MAX_CORR_BYTES)."""
INFO_BYTES = 56
"""Info field values packed side by side: the widest six fields of the catalogue fit."""
PKT_BYTES = 128
"""A parsed packet's header bytes (a power of two): 16 from the Ethernet header, then 96 from the
network header, then 16 that stay zero."""
L2_BYTES = 16
L4_SOURCE = 0x80
"""A piece's source ``L4_SOURCE | n`` starts at byte n of the transport header; other sources are
positions in the parsed packet's bytes."""
CORR_PIECES = 24
"""Gather pieces of a packet id: enough for any corr fields within CORR_BYTES (at most 18 fields fit
in 40 bytes; one piece each, plus one at each of the 4 word boundaries a field may cross)."""
INFO_PIECES = 12
"""Gather pieces of the info bytes: mace.safety.MAX_INFO_FIELDS fields, plus the 6 word boundaries."""
RX_SLOTS = 16
"""Packets one receive call can report (more are counted as ``in_batch_overflow``)."""
TCP_CHAIN = 64
"""Merged TCP segments one copied skb can account for."""
PENDING_WAYS = 4
"""Ways per set of the pending-packet tables."""
NO_TCP_SEQ = 0xFF
"""``flow_layout.tcp_seq_at`` when the packet id holds no tcp_seq."""
TGID_KEY = 1 << 63
"""Target keys with this bit are ``TGID_KEY | tgid`` (one process and its threads), else cgroup ids."""
TARGET_BITS_LOG2 = 16
"""The target filter's size: 2**16 bits, a few percent of them set by a thousand targets."""
TARGET_HASH = 0x9E3779B97F4A7C15
"""The multiplier whose top TARGET_BITS_LOG2 bits of ``key * TARGET_HASH`` pick a key's filter bit."""
GATE_SLOTS_LOG2 = 12
"""A call gate counts threads in 2**12 slots, a thread's slot picked by a hash of its id."""
GATE_HASH = 0x9E3779B1
"""The multiplier whose top GATE_SLOTS_LOG2 bits of ``tid * GATE_HASH`` (32-bit) pick a thread's slot."""
PORT_WORDS = 2 * (1 << 16) // 64
"""``rx_ports``: one bit per TCP port (words 0 to 1023), then one per UDP port."""
NODE_ADDRESSES = 4096
"""Addresses of the agent's network namespace the outer device's ingress admits whatever their port."""

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

PROBE_COUNTERS = (
    "out_inserted", "out_matched", "in_matched", "ringbuf_dropped", "rate_limited", "in_batch_overflow",
    "out_count", "out_sum", "out_max", "in_count", "in_sum", "in_max",
)
"""Each probe's counters, in ``probe_stats.c`` order (``*_max`` are maxima, the rest sums)."""
GROUP_COUNTERS = ("in_inserted", "in_duplicate", "in_taken")
"""Counters of a (device, ingress layout) pair: packets inserted at the device before anyone took them."""


class Struct(ctypes.Structure):
    """A struct of the shared layout; ``_c_name_`` is its C name."""

    _c_name_ = ""


class PieceC(Struct):
    """Up to 8 contiguous packet bytes packed into one 64-bit word of a packet id or of the info bytes:
    ``word |= (the 8 bytes from src, first byte lowest) << shift & mask``."""

    _c_name_ = "piece"
    _fields_ = [("mask", u64), ("src", u8), ("word", u8), ("shift", u8), ("pad", u8 * 5)]


class FlowLayoutC(Struct):
    """One flow spec as data: what a packet must be and the pieces its packed bytes are gathered from."""

    _c_name_ = "flow_layout"
    _fields_ = [
        ("family", u8), ("l4proto", u8), ("needs_l2", u8), ("tcp_seq_at", u8),
        ("corr_l4_end", u8), ("n_corr", u8), ("n_info", u8), ("pad", u8),
        ("corr", PieceC * CORR_PIECES), ("info", PieceC * INFO_PIECES),
    ]


class DeviceC(Struct):
    """An outer device (key: its ifindex in the agent's network namespace)."""

    _c_name_ = "device"
    _fields_ = [
        ("netns", u32), ("slot", u16), ("n_out", u8), ("n_in", u8),
        ("reads_l2", u8),  # READS_L2_OUT | READS_L2_IN: a layout of that direction takes Ethernet bytes
        ("pad", u8 * 7),
        ("out_layouts", u16 * DEV_LAYOUTS), ("in_layouts", u16 * DEV_LAYOUTS),
        ("seen", u64),  # the device's struct net_device, once a packet showed it (the kernel writes it)
    ]


class KnownDevicesC(Struct):
    """The outer devices' ``struct net_device`` addresses, each learnt from ``DeviceC.seen``, and a copy
    of each one's entry. While ``ready``, a device hook finds an outer device, or tells it from every
    other one, by its address alone: no kernel read and no hash lookup. The engine clears ``ready``
    before it changes ``devices``."""

    _c_name_ = "known_devices"
    _fields_ = [("ready", u32), ("n", u32), ("dev", u64 * KNOWN_DEVICES), ("entry", DeviceC * KNOWN_DEVICES)]


READS_L2_OUT, READS_L2_IN = 1, 2
"""Bits of ``DeviceC.reads_l2`` and ``TargetC.reads_l2``."""


class GroupC(Struct):
    """The measurement of one target that uses a flow layout on an outer device."""

    _c_name_ = "group"
    _fields_ = [("layout", u16), ("dev", u16), ("slot", u16), ("pad", u16)]


class TargetC(Struct):
    """A measured cgroup (or process): its network namespace and its probes, per direction."""

    _c_name_ = "target"
    _fields_ = [
        ("netns", u32), ("n_out", u8), ("n_in", u8),
        ("reads_l2", u8),  # READS_L2_OUT | READS_L2_IN, as in DeviceC
        ("pad", u8),
        ("out", GroupC * TARGET_GROUPS), ("in_", GroupC * TARGET_GROUPS),
    ]


class TargetFilterC(Struct):
    """Which target keys may be in ``targets``: bit ``target_bit(key)`` is set for every key there (and
    for a few others). A task whose keys' bits are clear leaves a hook without any hash lookup. A
    target's threads keep a copy of its entry (one for sending, one for receiving), looked up again
    only when the filter's ``generation`` changed since."""

    _c_name_ = "target_filter"
    _fields_ = [("processes", u32),  # some targets are processes (TGID_KEY keys)
                ("cgroups", u32),  # some targets are cgroups
                ("generation", u64),  # changes whenever ``targets`` changes: a thread's copy stays current
                ("bits", u64 * ((1 << TARGET_BITS_LOG2) // 64))]


def target_bit(key: int) -> int:
    """The bit of a key in a hashed bit array (mace.c's ``bit_of``): the target filter, the node's
    addresses, the UDP sockets with notes."""
    return ((key * TARGET_HASH) & ((1 << 64) - 1)) >> (64 - TARGET_BITS_LOG2)


def bit_words(bits: Iterable[int]) -> dict[int, int]:
    """The 64-bit words of a bit array with these bits set (word index -> word), the others absent."""
    words: dict[int, int] = {}
    for bit in bits:
        words[bit >> 6] = words.get(bit >> 6, 0) | 1 << (bit & 63)
    return words


class CallGateC(Struct):
    """Target threads inside a send call (gate 0), or in a receive call or holding packets to report
    (gate 1): in all, and in the slot of each thread's id. A thread leaves the hooks that follow a
    call's start without a task-storage lookup while no target thread is counted, or none in its slot."""

    _c_name_ = "call_gate"
    _fields_ = [("total", u32), ("n", u32 * (1 << GATE_SLOTS_LOG2))]


def port_bit(proto: int, port: int) -> int:
    """The bit of a TCP (6) or UDP (17) port in ``rx_ports`` (mace.c's ``port_word``)."""
    return (PORT_WORDS // 2 * 64 if proto == 17 else 0) + port


def node_address_bit(family: int, addr: bytes) -> int:
    """The bit of an address in ``node_address_bits`` (mace.c's ``to_node`` tests it before the hash)."""
    raw = addr.ljust(16, b"\0")
    key = family ^ int.from_bytes(raw[:8], "little") ^ int.from_bytes(raw[8:], "little")
    return target_bit(key)


class NodeAddressC(Struct):
    """A key of ``node_addresses``: an address of the agent's network namespace (IPv4: its first 4
    bytes, the rest zero)."""

    _c_name_ = "node_address"
    _fields_ = [("family", u32), ("addr", u8 * 16)]


class ProbeC(Struct):
    """A probe's settings (array index: its slot)."""

    _c_name_ = "probe"
    _fields_ = [("rate_limit", u64), ("stream", u32), ("pad", u32)]


class ProbeStatsC(Struct):
    """A probe's counters (array index: its slot)."""

    _c_name_ = "probe_stats"
    _fields_ = [("c", u64 * len(PROBE_COUNTERS))]


class GroupStatsC(Struct):
    """A (device, ingress layout) pair's counters (index: device slot * MAX_LAYOUTS + layout)."""

    _c_name_ = "group_stats"
    _fields_ = [("c", u64 * len(GROUP_COUNTERS))]


class RateWindowC(Struct):
    """A probe's event budget for the current second."""

    _c_name_ = "rate_window"
    _fields_ = [("second", u64), ("count", u64)]


class CorrKeyC(Struct):
    """A packet id: the flow layout and device it was read for, then the packed corr bytes."""

    _c_name_ = "corr_key"
    _fields_ = [("layout", u16), ("dev", u16), ("pad", u32), ("b", u8 * CORR_BYTES)]


class TxValC(Struct):
    """A sent packet waiting for the outer device: who sent it, for which slot (when its send began is
    its way's time in ``TxSetC.ts``)."""

    _c_name_ = "tx_val"
    _fields_ = [("pid", u32), ("tid", u32), ("slot", u16), ("pad", u16 * 3)]


class RxValC(Struct):
    """A received packet waiting for its reader: TCP's next sequence number, info (its arrival time is
    its way's time in ``RxSetC.ts``)."""

    _c_name_ = "rx_val"
    _fields_ = [("next_seq", u32), ("pad", u32), ("info", u8 * INFO_BYTES)]


class TxWayC(Struct):
    """A way of the egress pending table: a sent packet's id and value."""

    _c_name_ = "tx_way"
    _fields_ = [("key", CorrKeyC), ("value", TxValC)]


class RxWayC(Struct):
    """A way of the ingress pending table: a received packet's id and value."""

    _c_name_ = "rx_way"
    _fields_ = [("key", CorrKeyC), ("value", RxValC)]


class TxSetC(Struct):
    """One set of the egress pending table (mace.c): ``PENDING_WAYS`` ways. Their hashes (0: an empty
    way; written last, so a way is published whole) and times (a send's start, an arrival) share the set's
    first 64 bytes, the one cache line an insert or a miss reads; a way's packet id and value are read
    only when its hash matches."""

    _c_name_ = "tx_set"
    _fields_ = [("hash", u64 * PENDING_WAYS), ("ts", u64 * PENDING_WAYS), ("way", TxWayC * PENDING_WAYS)]


class RxSetC(Struct):
    """One set of the ingress pending table, laid out as ``TxSetC``."""

    _c_name_ = "rx_set"
    _fields_ = [("hash", u64 * PENDING_WAYS), ("ts", u64 * PENDING_WAYS), ("way", RxWayC * PENDING_WAYS)]


class EventC(Struct):
    """One measured packet in the ring buffer."""

    _c_name_ = "event"
    _fields_ = [("ts_end", u64), ("latency", u64), ("pid", u32), ("tid", u32), ("probe", u16),
                ("direction", u8), ("pad", u8 * 5), ("info", u8 * INFO_BYTES)]


SHARED = (PieceC, FlowLayoutC, DeviceC, KnownDevicesC, GroupC, TargetC, TargetFilterC, CallGateC,
          NodeAddressC, ProbeC, ProbeStatsC, GroupStatsC, RateWindowC, CorrKeyC, TxValC, RxValC, TxWayC,
          RxWayC, TxSetC, RxSetC, EventC)
"""Every shared struct, in the order C needs them (a struct before its users)."""

_C_TYPES: dict[Any, str] = {u8: "u8", u16: "u16", u32: "u32", u64: "u64"}


def _members(cls: type[Struct]) -> Iterator[str]:
    for name, kind, *_bits in cls._fields_:
        dims = ""
        base: Any = kind
        while issubclass(base, ctypes.Array):
            dims += f"[{base._length_}]"
            base = base._type_
        c_type = _C_TYPES.get(base) or f"struct {base._c_name_}"
        yield f"    {c_type} {name}{dims};"


def c_definitions() -> str:
    """The C text of every shared struct, each followed by a compile-time size check."""
    parts = []
    for cls in SHARED:
        body = "\n".join(_members(cls))
        parts.append(f"struct {cls._c_name_} {{\n{body}\n}};\n"
                     f"_Static_assert(sizeof(struct {cls._c_name_}) == {ctypes.sizeof(cls)}, "
                     f"\"struct {cls._c_name_} differs from mace_agent/layout.py\");")
    return "\n".join(parts) + "\n"


def counters_of(raw: Any, names: tuple[str, ...]) -> dict[str, int]:
    """A stats struct's counters by name."""
    return {name: int(raw.c[i]) for i, name in enumerate(names)}
