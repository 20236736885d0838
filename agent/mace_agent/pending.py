"""Counting the packets that wait in mace.c's pending tables: still pending, or expired.

Each table is an array of sets of ``codegen.PENDING_WAYS`` ways; a way is ``u64 hash`` (0: empty),
the packet id, then the value, whose first member is ``u64 ts``. The kernel never matches a way
older than the TTL and reuses it; here each such way is counted as expired once, however many
sweeps see it. Ways overwritten while still fresh are evictions, which the engine derives from
the kernel's counters.
"""

from __future__ import annotations

import ctypes
import errno
from struct import Struct
from typing import Any

from mace_agent import codegen


class PendingTable:
    """One direction's table: reads it in one system call and keeps the expiry count."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._sets = len(table)
        way_size = ctypes.sizeof(table.Leaf) // codegen.PENDING_WAYS
        self._way = Struct(f"<Q{codegen.CORR_BYTES}xQ{way_size - 8 - codegen.CORR_BYTES - 8}x")
        self._keys = (ctypes.c_uint32 * self._sets)()
        self._values = (table.Leaf * self._sets)()
        self._stale: set[tuple[int, int, int]] = set()
        self.expired = 0
        self.pending = 0

    def _read(self) -> memoryview:
        from bcc import lib  # loaded by the engine already

        count = ctypes.c_uint32(self._sets)
        out_batch = ctypes.c_uint32(0)
        result = lib.bpf_lookup_batch(self._table.map_fd, None, ctypes.byref(out_batch), self._keys,
                                      self._values, ctypes.byref(count))
        error = ctypes.get_errno()
        if result != 0 and error != errno.ENOENT:
            raise OSError(error, f"reading the pending table: {errno.errorcode.get(error, error)}")
        return memoryview(self._values).cast("B")[:count.value * ctypes.sizeof(self._table.Leaf)]

    def sweep(self, now_ns: int, ttl_ns: int) -> None:
        """Count fresh ways as pending and stale ways not counted before as expired."""
        live = 0
        stale = set()
        for position, (hash_, ts) in enumerate(self._way.iter_unpack(self._read())):
            if not hash_:
                continue
            if now_ns - ts > ttl_ns:
                stale.add((position, hash_, ts))
            else:
                live += 1
        self.expired += len(stale - self._stale)
        self._stale = stale
        self.pending = live
