"""Preparing the running kernel for the engine: tracing file systems, kernel headers, feature checks.

Every failure here is a :class:`KernelFeatureError` with a one-line reason; the CLI turns it
into exit code 3.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import re
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from mace_agent.btf import VMLINUX

HEADERS_ENV = "MACE_KERNEL_HEADERS"
"""Path of a kernel header tree bcc accepts; overrides the discovery below."""

HEADERS_CACHE_ENV = "MACE_HEADERS_CACHE"
"""Directory where a merged Debian header tree is kept (default: /var/cache/mace-agent)."""

DEFAULT_CACHE = Path("/var/cache/mace-agent")
SOURCES = Path("/usr/src")

_MOUNTS = (("tracefs", Path("/sys/kernel/tracing")), ("debugfs", Path("/sys/kernel/debug")))
_MOUNT_LOCK = threading.Lock()
_KCONFIG = Path("include/linux/kconfig.h")
_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MIN_RELEASE = (5, 13)
"""Oldest kernel the engine loads on: task-local storage in tracing programs arrived in 5.13."""


class KernelFeatureError(Exception):
    """The kernel (or the node) lacks something the engine needs."""


def _mounted(fstype: str, path: Path) -> bool:
    """Whether the topmost mount at ``path`` is a ``fstype`` (a bind-mounted empty directory is not)."""
    try:
        with open("/proc/self/mounts") as mounts:
            types = [line.split()[2] for line in mounts if line.split()[1] == str(path)]
    except OSError:
        return False
    return bool(types) and types[-1] == fstype


def _mount(fstype: str, target: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"nodev", str(target).encode(), fstype.encode(), 0, None) != 0:
        errno = ctypes.get_errno()
        raise KernelFeatureError(f"cannot mount {fstype} on {target}: {os.strerror(errno)}")


def ensure_tracing_mounts() -> None:
    """Mount tracefs and debugfs where bcc looks for tracepoints, if they are not there.

    ``ip netns exec`` gives its command a fresh /sys without them.
    """
    with _MOUNT_LOCK:  # engines may start on several threads
        for fstype, target in _MOUNTS:
            if not _mounted(fstype, target):
                _mount(fstype, target)


def tracepoint_exists(category: str, event: str) -> bool:
    """Whether the kernel has the tracepoint ``category:event`` (tracefs must be mounted)."""
    return any((root / "events" / category / event).is_dir()
               for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")))


def require_tracepoints(names: Iterable[str]) -> None:
    """Raise if any ``category:event`` tracepoint is missing."""
    missing = [n for n in names if not tracepoint_exists(*n.split(":", 1))]
    if missing:
        raise KernelFeatureError(f"kernel lacks tracepoint(s): {', '.join(missing)}")


def require_release(release: str | None = None) -> None:
    """Raise if the kernel release (default: the running one) is older than MIN_RELEASE.

    A release that does not start with ``MAJOR.MINOR`` is let through: loading will tell."""
    release = release or platform.release()
    match = re.match(r"(\d+)\.(\d+)", release)
    if match and (int(match[1]), int(match[2])) < MIN_RELEASE:
        oldest = ".".join(map(str, MIN_RELEASE))
        raise KernelFeatureError(f"kernel {release} is too old: the engine needs {oldest} or newer "
                                 "(task-local storage in tracing programs)")


def require_bpf_and_btf() -> None:
    """Raise unless the kernel offers BTF and the bpf() system call."""
    if not VMLINUX.is_file():
        raise KernelFeatureError(f"kernel BTF not found at {VMLINUX} (needs CONFIG_DEBUG_INFO_BTF)")
    if not Path("/proc/sys/kernel/unprivileged_bpf_disabled").exists():
        raise KernelFeatureError("kernel has no BPF support (/proc/sys/kernel/unprivileged_bpf_disabled "
                                 "missing; needs CONFIG_BPF_SYSCALL)")


def netns_inode() -> int:
    """Inode number of this process's network namespace (what the kernel calls ns.inum)."""
    return os.stat("/proc/self/ns/net").st_ino


def _has_kconfig(tree: Path) -> bool:
    return (tree / _KCONFIG).is_file()


def _has_host_headers() -> bool:
    return _has_kconfig(Path("/lib/modules") / platform.release() / "build")


def _debian_pairs() -> list[tuple[Path, Path]]:
    """(arch tree, common tree) pairs of installed Debian header packages, newest first."""
    pairs = []
    for common in SOURCES.glob("linux-headers-*-common"):
        stem = common.name.removesuffix("-common")
        for arch in SOURCES.glob(f"{stem}-*{_DEBIAN_ARCH.get(platform.machine(), platform.machine())}"):
            if arch.is_dir() and _has_kconfig(common):
                pairs.append((arch, common))

    def version(pair: tuple[Path, Path]) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", pair[1].name)]

    return sorted(pairs, key=version, reverse=True)


def _merge(target: Path, sources: list[Path]) -> None:
    """Fill ``target`` with symlinks so it shows the union of ``sources`` (earlier ones win)."""
    names: dict[str, list[Path]] = {}
    for source in sources:
        for entry in sorted(source.iterdir()):
            names.setdefault(entry.name, []).append(entry)
    for name, entries in names.items():
        dirs = [e for e in entries if e.is_dir()]
        if len(dirs) > 1:
            (target / name).mkdir()
            _merge(target / name, dirs)
        else:
            (target / name).symlink_to(entries[0].resolve())


def _merged_tree(arch: Path, common: Path) -> Path:
    cache = Path(os.environ.get(HEADERS_CACHE_ENV, DEFAULT_CACHE))
    tree = cache / f"kheaders-{arch.name}"
    if _has_kconfig(tree):
        return tree
    try:
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{tree.name}-", dir=cache))
        building.chmod(0o755)
    except OSError as error:
        raise KernelFeatureError(f"cannot create a kernel header tree under {cache}: {error.strerror} "
                                 f"(set {HEADERS_CACHE_ENV} to a writable directory)") from None
    _merge(building, [arch, common])
    with contextlib.suppress(OSError):  # another agent may have finished first; use its tree
        building.rename(tree)
    if not _has_kconfig(tree):
        raise KernelFeatureError(f"merged kernel header tree {tree} is incomplete")
    return tree


def kernel_headers() -> Path | None:
    """A header tree for bcc's BCC_KERNEL_SOURCE, or None when bcc finds the host's own headers.

    Order: $MACE_KERNEL_HEADERS; the host's /lib/modules/<release>/build; the newest Debian
    ``linux-headers-*-<arch>`` + ``-common`` pair under /usr/src, merged (as symlinks) into a
    private tree under $MACE_HEADERS_CACHE. Only definitions independent of the kernel release
    are used from them: struct layouts come from BTF.
    """
    configured = os.environ.get(HEADERS_ENV)
    if configured:
        if not _has_kconfig(Path(configured)):
            raise KernelFeatureError(f"{HEADERS_ENV}={configured} has no {_KCONFIG}")
        return Path(configured)
    if _has_host_headers():
        return None
    pairs = _debian_pairs()
    if not pairs:
        raise KernelFeatureError(
            f"no kernel headers: none in /lib/modules/{platform.release()}/build nor a Debian "
            f"linux-headers-*-common pair in {SOURCES} (install linux-headers-amd64 or set {HEADERS_ENV})")
    return _merged_tree(*pairs[0])


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def require_privileges() -> None:
    """Raise unless this process may load tracing programs (CAP_SYS_ADMIN, or CAP_BPF and CAP_PERFMON)."""
    try:
        with open("/proc/self/status") as status:
            caps = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if not (has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON))):
        raise KernelFeatureError("insufficient privileges: needs root (CAP_SYS_ADMIN, or CAP_BPF and "
                                 "CAP_PERFMON) to load eBPF tracing programs")


def prepare() -> None:
    """Everything the engine needs before compiling: checks, mounts, BCC_KERNEL_SOURCE."""
    require_privileges()
    require_release()
    require_bpf_and_btf()
    ensure_tracing_mounts()
    try:
        headers = kernel_headers()
    except OSError as error:
        raise KernelFeatureError(f"kernel headers: {error}") from None
    if headers is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers)
