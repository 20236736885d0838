"""Shared pieces of the local cluster harness: where its state lives, the processes it started, commands.

All state sits in ``.harness/`` at the repository root (``MACE_HARNESS_DIR`` overrides it). Every process the
harness starts is recorded with its PID *and* its start time (``/proc/<pid>/stat`` field 22), so a later
``down`` ends exactly those processes even if PIDs were reused meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HARNESS_DIR = Path(os.environ.get("MACE_HARNESS_DIR", REPO / ".harness")).resolve()
STATE_FILE = HARNESS_DIR / "state.json"
PODS_DIR = HARNESS_DIR / "pods"
LOGS_DIR = HARNESS_DIR / "logs"
KUBECONFIG = HARNESS_DIR / "kubeconfig"
LOCK_FILE = HARNESS_DIR / ".lock"

HARNESS_ID = hashlib.sha256(str(HARNESS_DIR).encode()).hexdigest()[:6]
PREFIX = f"mace-th{HARNESS_ID}"
"""Prefix of every namespace, cgroup and root-namespace device this harness makes (``mace-t`` + unique)."""

CLONE_NEWNET = 0x40000000


class HarnessError(RuntimeError):
    """Something the harness needs failed; the message says what (the CLI prints it, exit 1)."""


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[harness {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def python() -> str:
    """The interpreter the harness runs on (the repo venv's, which has the project installed)."""
    return sys.executable


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input_text: str | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run a command to completion; return stdout, raise HarnessError with its stderr on failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              input=input_text, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll ``predicate()`` until it returns something truthy; raise HarnessError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


@dataclass(frozen=True)
class Proc:
    """A process the harness started: PID plus start time, so a reused PID is never mistaken for it."""

    name: str
    pid: int
    started: int
    log: str = ""

    @classmethod
    def of(cls, name: str, pid: int, log_path: Path | str = "") -> Proc:
        started = start_time(pid)
        if started is None:
            raise HarnessError(f"{name} (pid {pid}) exited right after it was started; see {log_path}")
        return cls(name, pid, started, str(log_path))

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie counts as gone)."""
        if start_time(self.pid) != self.started:
            return False
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii", errors="replace") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state not in ("Z", "X")

    def signal(self, signum: int) -> bool:
        """Send ``signum`` if this process still runs; return whether it was sent."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
            return True
        return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; returns once the process is gone."""
        if not self.signal(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.signal(signal.SIGKILL):
            wait_for(f"{self.name} (pid {self.pid}) to die", lambda: not self.alive(), 10)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def spawn(name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
    """Start a detached background process (own session, output to ``log_path``) and record it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=REPO)
    return Proc.of(name, proc.pid, log_path)


# -- state ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(path: Path = LOCK_FILE) -> Iterator[None]:
    """Serialise changes to the harness state (or, with another ``path``, to something else)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_state() -> dict[str, Any]:
    """The recorded state of the harness ({} if it was never brought up)."""
    try:
        return dict(json.loads(STATE_FILE.read_text()))
    except FileNotFoundError:
        return {}


def save_state(state: dict[str, Any]) -> None:
    """Write the state atomically."""
    HARNESS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE_FILE)


def record(state: dict[str, Any], key: str, value: Any) -> None:
    """Set ``state[key]`` and save at once (so a failure half-way still leaves everything recorded)."""
    state[key] = value
    save_state(state)


def recorded_procs(state: dict[str, Any]) -> dict[str, Proc]:
    """The long-running processes recorded in the state, by role."""
    return {role: Proc(**fields) for role, fields in state.get("procs", {}).items()}


def record_proc(state: dict[str, Any], role: str, proc: Proc) -> None:
    """Record one long-running process under ``role``."""
    procs = dict(state.get("procs", {}))
    procs[role] = proc.as_json()
    record(state, "procs", procs)
