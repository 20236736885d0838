"""Run a function inside another network namespace without moving the whole process there.

``setns(2)`` with ``CLONE_NEWNET`` changes only the calling thread, so the function runs on a
short-lived thread that enters the namespace, calls it and leaves again; the rest of the process
never changes namespace. Sockets (e.g. pyroute2's netlink socket) made by that function belong to the
namespace they were created in, and pyroute2 keeps its sockets per thread, so all netlink work for the
other namespace must happen inside the function.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into network namespace failed: {os.strerror(errno)}")


def run_in_netns(ns_fd: int, func: Callable[[], T]) -> T:
    """Call ``func()`` on a thread that joined the network namespace open as ``ns_fd``; return its value."""
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(ns_fd)
            try:
                result.append(func())
            finally:
                # If going back fails, the thread ends right after anyway: nothing else runs on it.
                with contextlib.suppress(OSError):
                    _setns(own)
        except BaseException as exc:  # handed to the caller below
            error.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=work, name="mace-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
