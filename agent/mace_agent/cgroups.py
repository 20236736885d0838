"""The cgroup v2 id of a process: what the program compares with ``bpf_get_current_cgroup_id()``.

``/proc/<pid>/cgroup`` names the process's v2 cgroup (the ``0::`` line) relative to the reader's
cgroup namespace; the directory is looked up under every cgroup2 mount this process sees (on a
hybrid host the unified hierarchy sits at ``/sys/fs/cgroup/unified``) and in EXTRA_ROOTS, trying the
path's tails, and accepted only if it lists the
process. Its inode number is the cgroup id. A process in the root cgroup, or on a host without
a cgroup2 mount, has no usable id: callers fall back to its TGID.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

PROC = "/proc"
EXTRA_ROOTS = ("/host/sys/fs/cgroup", "/host/sys/fs/cgroup/unified")
"""Where the chart mounts the host's cgroup tree."""
SYS_CGROUP = Path("/sys/fs/cgroup")


class CgroupError(Exception):
    """The process has no cgroup v2 directory that can tell it apart from the rest of the node."""


def cgroup2_roots(mounts: str = f"{PROC}/self/mounts") -> list[str]:
    """Mount points of the cgroup2 file systems this process sees, and the chart's host mounts."""
    roots = []
    try:
        with open(mounts) as handle:
            roots = [line.split()[1] for line in handle if line.split()[2:3] == ["cgroup2"]]
    except OSError:
        pass
    return list(dict.fromkeys([*roots, *(r for r in EXTRA_ROOTS if os.path.isdir(r))]))


def ensure_cgroup2_mount() -> None:
    """Mount the cgroup2 hierarchy on /sys/fs/cgroup if this process sees no cgroup mount at all
    and that directory is empty: ``ip netns exec`` gives its command a fresh /sys (in a mount
    namespace of its own, so the mount goes away with it), as it does for tracefs."""
    if cgroup2_roots(f"{PROC}/self/mounts") or not SYS_CGROUP.is_dir() or any(SYS_CGROUP.iterdir()):
        return
    with open(f"{PROC}/self/mounts") as handle:
        if any(line.split()[2:3] == ["cgroup"] for line in handle):
            return  # a cgroup v1 host: there is no v2 tree to mount
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"none", str(SYS_CGROUP).encode(), b"cgroup2", 0, None) != 0:
        raise CgroupError(f"cannot mount cgroup2 on {SYS_CGROUP}: {os.strerror(ctypes.get_errno())}")


def v2_path(pid: int) -> str:
    """The process's cgroup v2 path as /proc shows it (raises CgroupError)."""
    try:
        text = Path(f"{PROC}/{pid}/cgroup").read_text()
    except OSError as error:
        raise CgroupError(f"cannot read the cgroups of PID {pid}: {error.strerror}") from None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise CgroupError(f"PID {pid} is in no cgroup v2 hierarchy")


def _lists(directory: str, pid: int) -> bool:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as handle:
            return str(pid) in handle.read().split()
    except OSError:
        return False


def cgroup_dir(pid: int, roots: list[str] | None = None) -> str:
    """The cgroup v2 directory of ``pid`` (raises CgroupError)."""
    parts = [p for p in v2_path(pid).split("/") if p and p != ".."]
    if not parts:
        raise CgroupError(f"PID {pid} is in the root cgroup, shared by the whole node")
    for root in roots if roots is not None else cgroup2_roots():
        for start in range(len(parts)):
            candidate = os.path.join(root, *parts[start:])
            if _lists(candidate, pid):
                return candidate
    raise CgroupError(f"no cgroup v2 directory of PID {pid} is visible here")


def cgroup_id(pid: int) -> int:
    """The cgroup v2 id of ``pid`` (raises CgroupError)."""
    ensure_cgroup2_mount()
    return os.stat(cgroup_dir(pid)).st_ino


def cgroup_pids(pid: int) -> set[int]:
    """The processes of pid's cgroup v2 (just pid where it has none)."""
    try:
        text = Path(cgroup_dir(pid), "cgroup.procs").read_text()
    except (CgroupError, OSError):
        return {pid}
    return {int(p) for p in text.split()} | {pid}
