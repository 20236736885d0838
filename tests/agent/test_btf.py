"""The BTF reader: member offsets by path, through anonymous structs and unions."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from mace_agent.btf import BTF, VMLINUX, BTFError, Member


class _Blob:
    """Builds a tiny BTF blob: ints, pointers, typedefs, structs and unions."""

    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def _name(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def _add(self, record: bytes) -> int:
        self.types += record
        self.count += 1
        return self.count

    def int_type(self, name: str, size: int) -> int:
        return self._add(struct.pack("<III", self._name(name), 1 << 24, size) + struct.pack("<I", size * 8))

    def pointer(self, target: int) -> int:
        return self._add(struct.pack("<III", 0, 2 << 24, target))

    def typedef(self, name: str, target: int) -> int:
        return self._add(struct.pack("<III", self._name(name), 8 << 24, target))

    def composite(self, name: str, size: int, members: list[tuple[str, int, int]], *, union: bool = False,
                  bitfield_sizes: dict[str, int] | None = None) -> int:
        kind = 5 if union else 4
        bitfields = bitfield_sizes or {}
        flag = 1 << 31 if bitfields else 0
        record = struct.pack("<III", self._name(name), flag | kind << 24 | len(members), size)
        for member, type_id, bit_offset in members:
            offset = bitfields.get(member, 0) << 24 | bit_offset if bitfields else bit_offset
            record += struct.pack("<III", self._name(member), type_id, offset)
        return self._add(record)

    def build(self) -> bytes:
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                             len(self.strings))
        return header + self.types + self.strings


@pytest.fixture
def blob() -> BTF:
    b = _Blob()
    u16 = b.int_type("u16", 2)
    u32 = b.int_type("unsigned int", 4)
    inner = b.composite("", 4, [("network_header", u16, 0), ("mac_header", u16, 16)])
    union = b.composite("", 4, [("headers", u32, 0), ("", inner, 0)], union=True)
    net = b.composite("net", 8, [("inum", u32, 32)])
    holder = b.composite("", 8, [("net", b.pointer(net), 0)])
    possible = b.typedef("possible_net_t", holder)
    b.composite("sk_buff", 32, [("len", u32, 0), ("", union, 64), ("nd_net", possible, 128)])
    b.composite("flags", 4, [("kind", u32, 0), ("bits", u32, 3)], bitfield_sizes={"kind": 3, "bits": 5})
    return BTF(b.build())


def test_resolves_a_plain_member(blob: BTF) -> None:
    assert blob.member("sk_buff", "len") == Member(0, 4)


def test_looks_through_anonymous_unions_and_structs(blob: BTF) -> None:
    assert blob.member("sk_buff", "network_header") == Member(8, 2)
    assert blob.member("sk_buff", "mac_header") == Member(10, 2)


def test_follows_a_path_through_typedefs(blob: BTF) -> None:
    assert blob.member("sk_buff", "nd_net.net") == Member(16, 8)


def test_unknown_struct_or_member_is_an_error(blob: BTF) -> None:
    with pytest.raises(BTFError, match="struct nope not found"):
        blob.member("nope", "len")
    with pytest.raises(BTFError, match=r"no member nd_net\.missing"):
        blob.member("sk_buff", "nd_net.missing")


def test_bit_fields_are_refused(blob: BTF) -> None:
    with pytest.raises(BTFError, match="bit field"):
        blob.member("flags", "bits")


def test_malformed_blobs_are_refused() -> None:
    with pytest.raises(BTFError, match="magic"):
        BTF(b"\0" * 64)
    with pytest.raises(BTFError, match="too short"):
        BTF(b"\x9f\xeb")
    with pytest.raises(BTFError, match="cannot read"):
        BTF.load(Path("/nonexistent/btf"))


@pytest.mark.skipif(not VMLINUX.exists(), reason="the kernel exposes no BTF")
def test_running_kernel_offsets_have_the_expected_sizes() -> None:
    btf = BTF.load()
    assert btf.member("sk_buff", "head").size == 8
    assert btf.member("sk_buff", "network_header").size == 2
    assert btf.member("net_device", "ifindex").size == 4
    assert btf.member("net_device", "nd_net.net").size == 8
    assert btf.member("net", "ns.inum").size == 4
    # network_header and mac_header sit next to each other inside anonymous groups
    network = btf.member("sk_buff", "network_header").offset
    assert abs(btf.member("sk_buff", "mac_header").offset - network) == 2
