"""Giving back the memory the program's compile used: the engine compiles once, so clang and LLVM are
never needed again once the program is loaded.

Two kinds of memory stay resident after bcc's compile: freed heap that the C allocator keeps
(``malloc_trim`` returns it), and the pages of LLVM's and clang's code touched while compiling, file
pages that count in the agent's RSS and its container's memory (about 90 MiB). ``MADV_PAGEOUT``
(Linux 5.4) asks the kernel to reclaim them; they are clean, so nothing is written, and a page used again
would simply be read back in.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

MADV_PAGEOUT = 21
COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang-cpp)[-.][^/]*$")
"""The shared libraries of bcc's compiler (Debian: libLLVM-14.so.1, libclang-cpp.so.14)."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def compiler_mappings(maps: str) -> list[tuple[int, int]]:
    """Address ranges of the compiler libraries' read-only mappings in a ``/proc/PID/maps`` text."""
    ranges = []
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) >= 6 and "w" not in parts[1] and COMPILER_LIBRARIES.search(parts[5]):
            low, high = (int(bound, 16) for bound in parts[0].split("-"))
            ranges.append((low, high))
    return ranges


def release_compiler_memory() -> None:
    """Return freed heap to the kernel and let it reclaim the compiler's code pages (best effort: an
    older kernel or another C library keeps them, and nothing else changes)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    for low, high in compiler_mappings(Path("/proc/self/maps").read_text()):
        _libc.madvise(low, high - low, MADV_PAGEOUT)
