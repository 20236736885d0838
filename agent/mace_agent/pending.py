"""Counting the packets that wait in mace.c's pending tables: still pending, or expired.

Each table is an array of sets (``layout.TxSetC``, ``layout.RxSetC``): the ways' hashes (0: empty) and
times, then each way's packet id and value. The kernel never matches a way older than the TTL and
reuses it; here each such way is counted as expired once, however many sweeps see it, and attributed:
an egress way to the slot its value names, an ingress way to its (flow layout, device) pair. Ways
overwritten while still fresh are evictions, which the engine derives from the kernel's counters.
"""

from __future__ import annotations

import ctypes
import errno
from collections import Counter
from collections.abc import Callable, Iterator
from struct import Struct, calcsize
from typing import Any

from mace_agent import layout

WAYS = layout.PENDING_WAYS


def _reader(cls: type[layout.Struct], fields: list[tuple[int, str]]) -> Struct:
    """A reader of a whole ``cls`` that unpacks only the (offset, struct code) fields, in offset order."""
    parts, at = ["<"], 0
    for offset, code in sorted(fields):
        parts.append(f"{offset - at}x{code}")
        at = offset + calcsize(code)
    parts.append(f"{ctypes.sizeof(cls) - at}x")
    return Struct("".join(parts))


def _way_field(set_cls: Any, way_cls: Any, way: int, *path: tuple[Any, str]) -> int:
    """Offset in a set of one member of way ``way`` (path: (struct class, member) pairs)."""
    return int(set_cls.way.offset + way * ctypes.sizeof(way_cls) + sum(getattr(c, m).offset for c, m in path))


def _tags(set_cls: Any) -> list[tuple[int, str]]:
    return [(set_cls.hash.offset + 8 * w, "Q") for w in range(WAYS)] + \
           [(set_cls.ts.offset + 8 * w, "Q") for w in range(WAYS)]


_TX_SET = _reader(layout.TxSetC, _tags(layout.TxSetC) + [
    (_way_field(layout.TxSetC, layout.TxWayC, w, (layout.TxWayC, "value"), (layout.TxValC, "slot")), "H")
    for w in range(WAYS)])
"""hashes, times, then each way's slot."""
_RX_SET = _reader(layout.RxSetC, _tags(layout.RxSetC) + [
    (_way_field(layout.RxSetC, layout.RxWayC, w, (layout.RxWayC, "key"), (layout.CorrKeyC, member)), "H")
    for w in range(WAYS) for member in ("layout", "dev")])
"""hashes, times, then each way's flow layout and device slot."""


Owner = Callable[[tuple[int, ...], int], Any]
"""What a way counts for, from a set's fields (as its reader unpacks them) and the way's number."""


class _Table:
    """One table: read in one system call per sweep."""

    def __init__(self, table: Any, set_cls: Any, reader: Struct, owner_of: Owner) -> None:
        if ctypes.sizeof(table.Leaf) != ctypes.sizeof(set_cls):
            raise ValueError(f"pending table sets of {ctypes.sizeof(table.Leaf)} bytes, layout.py says "
                             f"{ctypes.sizeof(set_cls)}")
        self._table, self._reader, self._owner_of = table, reader, owner_of
        self._sets = len(table)
        self._keys = (ctypes.c_uint32 * self._sets)()
        self._values = (set_cls * self._sets)()
        self.stale: set[tuple[int, int, int]] = set()

    def sets(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(set index, the reader's fields) of every set."""
        from bcc import lib  # loaded by the engine already

        count = ctypes.c_uint32(self._sets)
        out_batch = ctypes.c_uint32(0)
        result = lib.bpf_lookup_batch(self._table.map_fd, None, ctypes.byref(out_batch), self._keys,
                                      self._values, ctypes.byref(count))
        error = ctypes.get_errno()
        if result != 0 and error != errno.ENOENT:
            raise OSError(error, f"reading the pending table: {errno.errorcode.get(error, error)}")
        view = memoryview(self._values).cast("B")[:count.value * self._reader.size]
        return enumerate(self._reader.iter_unpack(view))

    def sweep(self, expired: Counter[Any], now_ns: int, ttl_ns: int) -> Counter[Any]:
        """The fresh ways per owner; stale ways not seen stale before are added to ``expired``."""
        live: Counter[Any] = Counter()
        stale = set()
        for index, fields in self.sets():
            for w in range(WAYS):
                hash_, ts = fields[w], fields[WAYS + w]
                if not hash_:
                    continue
                owner = self._owner_of(fields, w)
                if now_ns - ts <= ttl_ns:
                    live[owner] += 1
                    continue
                way = (index * WAYS + w, hash_, ts)
                stale.add(way)
                if way not in self.stale:
                    expired[owner] += 1
        self.stale = stale
        return live


class PendingTables:
    """Both directions' tables and what their sweeps counted."""

    def __init__(self, tx: Any, rx: Any) -> None:
        self._tx = _Table(tx, layout.TxSetC, _TX_SET, lambda fields, w: fields[2 * WAYS + w])
        self._rx = _Table(rx, layout.RxSetC, _RX_SET,
                          lambda fields, w: (fields[2 * WAYS + 2 * w], fields[2 * WAYS + 2 * w + 1]))
        self.tx_expired: Counter[int] = Counter()
        """Expired egress packets by slot."""
        self.rx_expired: Counter[tuple[int, int]] = Counter()
        """Expired ingress packets by (flow layout, device slot)."""
        self.tx_live: Counter[int] = Counter()
        self.rx_live: Counter[tuple[int, int]] = Counter()

    def sweep(self, now_ns: int, ttl_ns: int) -> None:
        """Count fresh ways as pending and stale ways not counted before as expired."""
        self.tx_live = self._tx.sweep(self.tx_expired, now_ns, ttl_ns)
        self.rx_live = self._rx.sweep(self.rx_expired, now_ns, ttl_ns)
