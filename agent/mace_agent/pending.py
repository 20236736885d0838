"""Counting the packets that wait in mace.c's pending tables: still pending, or expired.

Each table is an array of sets of ``layout.PENDING_WAYS`` ways; a way is ``u64 hash`` (0: empty),
the packet id (``struct corr_key``: flow layout, device, corr bytes), then the value, whose first
member is ``u64 ts``. The kernel never matches a way older than the TTL and reuses it; here each
such way is counted as expired once, however many sweeps see it, and attributed: an egress way
to the slot its value names, an ingress way to its (flow layout, device) pair. Ways overwritten
while still fresh are evictions, which the engine derives from the kernel's counters.
"""

from __future__ import annotations

import ctypes
import errno
from collections import Counter
from struct import Struct
from typing import Any

from mace_agent import layout

_KEY = "HHI40x"
_TX_WAY = Struct(f"<Q{_KEY}QIIH6x")
_RX_WAY = Struct(f"<Q{_KEY}Q{ctypes.sizeof(layout.RxValC) - 8}x")


def _check(table: Any, way: Struct) -> None:
    size = ctypes.sizeof(table.Leaf)
    if size != layout.PENDING_WAYS * way.size:
        raise ValueError(f"pending table sets of {size} bytes, expected {layout.PENDING_WAYS} x {way.size}")


class _Table:
    """One table: read in one system call per sweep."""

    def __init__(self, table: Any, way: Struct) -> None:
        _check(table, way)
        self._table, self.way = table, way
        self._sets = len(table)
        self._keys = (ctypes.c_uint32 * self._sets)()
        self._values = (table.Leaf * self._sets)()
        self.stale: set[tuple[int, int, int]] = set()

    def ways(self) -> Any:
        from bcc import lib  # loaded by the engine already

        count = ctypes.c_uint32(self._sets)
        out_batch = ctypes.c_uint32(0)
        result = lib.bpf_lookup_batch(self._table.map_fd, None, ctypes.byref(out_batch), self._keys,
                                      self._values, ctypes.byref(count))
        error = ctypes.get_errno()
        if result != 0 and error != errno.ENOENT:
            raise OSError(error, f"reading the pending table: {errno.errorcode.get(error, error)}")
        view = memoryview(self._values).cast("B")[:count.value * ctypes.sizeof(self._table.Leaf)]
        return enumerate(self.way.iter_unpack(view))


class PendingTables:
    """Both directions' tables and what their sweeps counted."""

    def __init__(self, tx: Any, rx: Any) -> None:
        self._tx, self._rx = _Table(tx, _TX_WAY), _Table(rx, _RX_WAY)
        self.tx_expired: Counter[int] = Counter()
        """Expired egress packets by slot."""
        self.rx_expired: Counter[tuple[int, int]] = Counter()
        """Expired ingress packets by (flow layout, device slot)."""
        self.tx_live: Counter[int] = Counter()
        self.rx_live: Counter[tuple[int, int]] = Counter()

    def sweep(self, now_ns: int, ttl_ns: int) -> None:
        """Count fresh ways as pending and stale ways not counted before as expired."""
        tx_live: Counter[int] = Counter()
        stale = set()
        for position, (hash_, _layout, _dev, _pad, ts, _pid, _tid, slot) in self._tx.ways():
            if not hash_:
                continue
            if now_ns - ts <= ttl_ns:
                tx_live[slot] += 1
                continue
            stale.add((position, hash_, ts))
            if (position, hash_, ts) not in self._tx.stale:
                self.tx_expired[slot] += 1
        self._tx.stale, self.tx_live = stale, tx_live
        rx_live: Counter[tuple[int, int]] = Counter()
        stale = set()
        for position, (hash_, layout_id, dev, _pad, ts) in self._rx.ways():
            if not hash_:
                continue
            if now_ns - ts <= ttl_ns:
                rx_live[(layout_id, dev)] += 1
                continue
            stale.add((position, hash_, ts))
            if (position, hash_, ts) not in self._rx.stale:
                self.rx_expired[(layout_id, dev)] += 1
        self._rx.stale, self.rx_live = stale, rx_live
