"""The gather pieces of a flow layout build the same packed bytes as taking each field byte by byte.

The program (agent/bpf/mace.c, ``gather``) builds a packet id and the info bytes a 64-bit word at a
time from pieces; here the same arithmetic runs on random header bytes for random flow specs and is
compared with the packing the fields define: each field's bytes, masked, side by side. The kernel
tests (tests/agent) check the same on real packets for the specs they use.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from mace_agent.flows import FlowLayout, _source
from mace_agent.layout import CORR_BYTES, INFO_BYTES, L2_BYTES, PKT_BYTES

from mace.fields import CATALOGUE, End, Field, Header
from mace.models import FlowSpec
from mace.safety import MAX_CORR_BYTES

WORD = (1 << 64) - 1
ZERO_TAIL = PKT_BYTES - 16
"""Where the parsed packet's zero tail starts (the program reads no packet bytes past it)."""


def _position(src: int, l4off: int) -> int:
    return ((src & 0x7F) + (src >> 7) * (L2_BYTES + l4off)) & (PKT_BYTES - 1)


def _by_pieces(packet: bytes, l4off: int, pieces: Any, n: int, size: int) -> bytes:
    """mace.c's gather: each piece's 8 bytes, first byte lowest, shifted and masked into its word."""
    words = [0] * (size // 8)
    for piece in pieces[:n]:
        at = min(_position(piece.src, l4off), ZERO_TAIL)
        value = int.from_bytes(packet[at:at + 8], "little")
        words[piece.word] |= (value << piece.shift) & WORD & piece.mask
    return b"".join(w.to_bytes(8, "little") for w in words)


def _by_fields(packet: bytes, l4off: int, slots: Any, size: int) -> bytes:
    """The packing the fields define: each field's bytes, masked, at its offset."""
    out = bytearray(size)
    for slot in slots:
        info = CATALOGUE[slot.field]
        whole = (1 << (8 * slot.width)) - 1
        masks = (info.mask if info.mask is not None else whole).to_bytes(slot.width, "big")
        for i in range(slot.width):
            out[slot.offset + i] = packet[_position(_source(info.header, info.offset + i), l4off)] & masks[i]
    return bytes(out)


STACKS = [(Header.ipv4, Header.icmp, Field.icmp_seq), (Header.ipv6, Header.icmp6, Field.icmp6_seq),
          (Header.ipv4, Header.udp, Field.udp_payload), (Header.ipv6, Header.udp, Field.udp_payload),
          (Header.ipv4, Header.tcp, Field.tcp_seq), (Header.ipv6, Header.tcp, Field.tcp_seq)]


@st.composite
def flow_specs(draw: st.DrawFn) -> FlowSpec:
    """Flow specs the safety catches accept: fields of one packet's headers, corr with a per-packet one."""
    family, transport, per_packet = draw(st.sampled_from(STACKS))
    pool = [f for f, i in CATALOGUE.items() if i.header in (Header.eth, family, transport)]
    both_ends = [f for f in pool if {End.process, End.device} <= set(CATALOGUE[f].ends)]
    corr = {per_packet} | draw(st.sets(st.sampled_from(both_ends), max_size=8))
    while sum(CATALOGUE[f].width for f in corr) > MAX_CORR_BYTES:
        corr.remove(max(corr - {per_packet}, key=lambda f: CATALOGUE[f].width))
    info = draw(st.sets(st.sampled_from(pool), max_size=6))
    return FlowSpec(corr=tuple(corr), info=tuple(info))


@settings(max_examples=300, deadline=None)
@given(spec=flow_specs(), l4off=st.sampled_from([20, 24, 40, 60, 80]),
       header=st.binary(min_size=ZERO_TAIL, max_size=ZERO_TAIL))
def test_pieces_pack_every_field_byte_in_place(spec: FlowSpec, l4off: int, header: bytes) -> None:
    flow = FlowLayout.of(spec)
    value = flow.to_c()
    packet = header + bytes(PKT_BYTES - ZERO_TAIL)
    assert _by_pieces(packet, l4off, value.corr, value.n_corr, CORR_BYTES) == \
        _by_fields(packet, l4off, flow.corr, CORR_BYTES)
    assert _by_pieces(packet, l4off, value.info, value.n_info, INFO_BYTES) == \
        _by_fields(packet, l4off, flow.info, INFO_BYTES)


def test_fields_side_by_side_in_the_packet_share_a_piece() -> None:
    spec = FlowSpec(corr=(Field.ip_src_addr, Field.ip_dst_addr, Field.icmp_id, Field.icmp_seq))
    value = FlowLayout.of(spec).to_c()
    assert value.n_corr == 2  # the two addresses, then id and sequence number
