"""A small reader of the kernel's BTF: byte offsets of struct members, by path.

The agent never trusts header struct layouts (the headers it compiles with may be for
another kernel release); every offset its eBPF program uses comes from here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = frozenset({_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG})
# Bytes that follow the common type record, per kind: (fixed, per vlen item).
_EXTRA = {
    _INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
    _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0), _ENUM64: (0, 12),
}


class BTFError(Exception):
    """The BTF blob is missing or malformed, or a requested member does not exist."""


@dataclass(frozen=True)
class Member:
    """Where a resolved member sits: byte offset from the outer struct, and its size in bytes."""

    offset: int
    size: int


class BTF:
    """Type information of one BTF blob (by default the running kernel's vmlinux BTF)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BTFError("BTF blob is too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x}")
        self._data = data
        self._types_at = hdr_len + type_off
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._offsets: list[int] = [0]  # type id 0 is void
        self._by_name: dict[str, list[int]] = {}
        self._index(self._types_at, self._types_at + type_len)

    @classmethod
    def load(cls, path: Path = VMLINUX) -> BTF:
        """Read a BTF file (e.g. /sys/kernel/btf/vmlinux)."""
        try:
            return cls(path.read_bytes())
        except OSError as error:
            raise BTFError(f"cannot read {path}: {error.strerror}") from None

    def _index(self, pos: int, end: int) -> None:
        data = self._data
        while pos < end:
            name_off, info, _size = _TYPE.unpack_from(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            type_id = len(self._offsets)
            self._offsets.append(pos)
            if kind in (_STRUCT, _UNION) and name_off:
                self._by_name.setdefault(self._name(name_off), []).append(type_id)
            fixed, item = _EXTRA.get(kind, (0, 0))
            pos += _TYPE.size + fixed + item * vlen

    def _name(self, offset: int) -> str:
        stop = self._strings.index(b"\0", offset)
        return self._strings[offset:stop].decode()

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type) of a type id."""
        if not 0 < type_id < len(self._offsets):
            raise BTFError(f"type id {type_id} out of range")
        _name_off, info, size_or_type = _TYPE.unpack_from(self._data, self._offsets[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def _strip(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(64):
            kind, _vlen, _flag, ref = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref
        raise BTFError("typedef chain too long")

    def _size(self, type_id: int) -> int:
        type_id = self._strip(type_id)
        kind, _vlen, _flag, size_or_type = self._type(type_id)
        if kind in (_INT, _STRUCT, _UNION, _ENUM, _ENUM64, _FLOAT):
            return size_or_type
        if kind == _PTR:
            return 8
        if kind == _ARRAY:
            elem, _index_type, nelems = struct.unpack_from("<III", self._data, self._offsets[type_id] + 12)
            return self._size(int(elem)) * int(nelems)
        raise BTFError(f"type id {type_id} (kind {kind}) has no size")

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of a named member, looking through anonymous structs and unions."""
        kind, vlen, kind_flag, _size = self._type(type_id)
        if kind not in (_STRUCT, _UNION):
            return None
        base = self._offsets[type_id] + _TYPE.size
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._data, base + i * _MEMBER.size)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if kind_flag and offset >> 24:
                if name_off and self._name(name_off) == name:
                    raise BTFError(f"member {name} is a bit field")
                continue
            if name_off:
                if self._name(name_off) == name:
                    return bits, member_type
            else:
                inner = self._find_member(self._strip(member_type), name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None

    def struct_id(self, name: str) -> int:
        """The type id of the (unique, complete) struct or union with this name."""
        ids = [i for i in self._by_name.get(name, []) if self._type(i)[1] > 0]
        if not ids:
            raise BTFError(f"struct {name} not found in BTF")
        return ids[0]

    def member(self, struct_name: str, path: str) -> Member:
        """Resolve ``path`` (``a.b.c``; ``b`` inside member ``a``, ...) in ``struct struct_name``."""
        type_id = self.struct_id(struct_name)
        total = 0
        member_type = type_id
        for part in path.split("."):
            found = self._find_member(self._strip(member_type), part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            bits, member_type = found
            total += bits
        if total % 8:
            raise BTFError(f"member {struct_name}.{path} is not byte aligned")
        return Member(total // 8, self._size(member_type))
