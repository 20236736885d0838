"""The measured process and device: checked at start, watched for disappearance."""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path

PROCESS_EXITED = "process_exited"
DEVICE_REMOVED = "device_removed"


class TargetError(Exception):
    """The filter names a process or device that does not exist."""


class Target:
    """A process (root PID namespace) and a device ifindex (this network namespace) being measured."""

    def __init__(self, proc_id: int, dev_id: int) -> None:
        self.proc_id = proc_id
        self.dev_id = dev_id
        try:
            self.dev_name = socket.if_indextoname(dev_id)
        except OSError:
            raise TargetError(f"no device with ifindex {dev_id} in this network namespace") from None
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc_id)
        except ProcessLookupError:
            raise TargetError(f"no process with PID {proc_id}") from None
        except OSError:  # no pidfd support: fall back to /proc
            if not Path(f"/proc/{proc_id}").exists():
                raise TargetError(f"no process with PID {proc_id}") from None
        try:
            self.netns_inode = os.stat(f"/proc/{proc_id}/ns/net").st_ino
        except OSError as error:
            self.close()
            raise TargetError(f"cannot see the network namespace of PID {proc_id}: "
                              f"{error.strerror}") from None

    def _process_gone(self) -> bool:
        if self._pidfd is None:
            return not Path(f"/proc/{self.proc_id}").exists()
        poller = select.poll()  # not select(): an agent with many runs holds fds above 1023
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def _device_gone(self) -> bool:
        try:
            return socket.if_indextoname(self.dev_id) != self.dev_name
        except OSError:
            return True

    def gone(self) -> str | None:
        """Why measuring cannot go on (``process_exited``, ``device_removed``), or None."""
        if self._process_gone():
            return PROCESS_EXITED
        if self._device_gone():
            return DEVICE_REMOVED
        return None

    def close(self) -> None:
        """Release the process handle."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
