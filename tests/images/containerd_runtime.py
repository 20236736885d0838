"""A private containerd (Debian's containerd + runc), started by hand for the image smoke tests.

It has its own root, state directory and socket under a directory the caller owns, runs no CRI plugin,
and is stopped by PID; every container it ran is removed first. Images come in as OCI archives
(``buildah push IMAGE oci-archive:FILE:IMAGE``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

NAMESPACE = "mace-images"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0

DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")
"""The capabilities ctr gives a container by default (OCI defaults); dropped for "exactly these caps"."""


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr command failed; the message holds its output."""


def missing_tools() -> list[str]:
    """Executables this runtime needs that are not installed."""
    return [tool for tool in ("containerd", "ctr", "runc") if shutil.which(tool) is None]


def capability_args(add: Sequence[str]) -> list[str]:
    """ctr flags giving a container exactly the capabilities ``add`` (names without ``CAP_``)."""
    args: list[str] = []
    for cap in DEFAULT_CAPS:
        if cap not in add:
            args += ["--cap-drop", f"CAP_{cap}"]
    for cap in add:
        args += ["--cap-add", f"CAP_{cap}"]
    return args


class Containerd:
    """containerd serving ``<root>/containerd.sock``; use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        self.log_path = root / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write a config for private directories, start containerd and wait for its socket."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.root / "root"}"\n'
            f'state = "{self.root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n')
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited ({self.proc.returncode}): {self.log_tail()}")
            if self.socket.is_socket() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ContainerdError(f"containerd did not answer within {START_TIMEOUT_S}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of containerd's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ctr(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd, in its own namespace."""
        done = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args[:3])} failed ({done.returncode}): "
                                f"{done.stderr.strip() or done.stdout.strip()}")
        return done

    def ctr_argv(self, *args: str) -> list[str]:
        """The command line of ``ctr ARGS`` against this containerd (for long-running commands)."""
        return ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def import_archive(self, archive: Path) -> None:
        """Import an OCI archive's image(s)."""
        self.ctr("images", "import", str(archive), timeout=300)

    def _remove_containers(self) -> None:
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            self.ctr("tasks", "delete", "--force", task, check=False)
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def stop(self) -> None:
        """Remove every container, stop containerd (by PID) and delete its directories."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._remove_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None
        _remove_namespace_cgroups()
        if not _has_mounts_under(self.root):
            shutil.rmtree(self.root, ignore_errors=True)


def _remove_namespace_cgroups() -> None:
    """runc leaves the (empty) cgroup directory named after the containerd namespace in each
    hierarchy; remove those, deepest first (rmdir only ever removes an empty cgroup)."""
    tops = [*Path("/sys/fs/cgroup").glob(NAMESPACE), *Path("/sys/fs/cgroup").glob(f"*/{NAMESPACE}")]
    for top in tops:
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            directory.rmdir()
        top.rmdir()


def _has_mounts_under(path: Path) -> bool:
    prefix = str(path.resolve()) + os.sep
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
        return any(line.split()[1].startswith(prefix) for line in mounts if len(line.split()) > 1)
