"""Child processes of a lab topology whose output is collected by reader threads.

:class:`AgentProcess` runs ``mace-agent run`` and sorts its JSON stream into events and the summary;
:class:`TrafficProcess` runs a :mod:`mace_lab.traffic` command; :class:`Child` runs anything
(e.g. ``ping``) and keeps its lines. Callers wait on conditions (attached, N events seen, exited)
with deadlines instead of sleeping. Memory is bounded: at most ``keep`` lines are kept per child.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from mace.grammar import parse, render
from mace_lab.topology import Topology, stop_process

ATTACHED = "mace-agent: attached"
MAX_KEPT = 200_000
"""Default number of stdout lines kept per child; later ones are only counted."""

Record = dict[str, Any]


class ChildError(RuntimeError):
    """A child exited early or missed a deadline; the message carries its stderr."""


class Child:
    """A process started in ``ns``; stdout lines kept (JSON objects decoded), stderr kept as text."""

    def __init__(self, topology: Topology, ns: str, argv: Sequence[str], *, gated: bool = False,
                 keep: int = MAX_KEPT) -> None:
        self.argv = list(argv)
        self.keep = keep
        self.lines: list[Any] = []
        self.line_count = 0
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._open_streams = 2
        self.proc = topology.popen(ns, self.argv, gated=gated, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for target, stream in ((self._read_stdout, self.proc.stdout), (self._read_stderr, self.proc.stderr)):
            threading.Thread(target=target, args=(stream,), daemon=True).start()

    @property
    def pid(self) -> int:
        """The PID of the command itself (``ip netns exec`` and the gate exec it)."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.proc.poll() is None

    def release(self) -> None:
        """Let a gated child start its real work."""
        Topology.release(self.proc)

    # -- readers ----------------------------------------------------------------------------------

    def _take(self, item: Any) -> None:
        """Store one stdout item (a decoded JSON object or a raw line); called with the lock held."""
        self.line_count += 1
        if len(self.lines) < self.keep:
            self.lines.append(item)

    def _took_stderr(self, line: str) -> None:
        """Hook for subclasses: one stderr line arrived; called with the lock held."""

    def _read_stdout(self, stream: TextIO) -> None:
        for line in stream:
            item: Any = line.rstrip("\n")
            if item.startswith("{"):
                with contextlib.suppress(ValueError):
                    item = json.loads(item)
            with self._changed:
                self._take(item)
                self._changed.notify_all()
        self._stream_closed()

    def _read_stderr(self, stream: TextIO) -> None:
        for line in stream:
            with self._changed:
                if len(self.stderr_lines) < 1000:
                    self.stderr_lines.append(line.rstrip("\n"))
                self._took_stderr(line)
                self._changed.notify_all()
        self._stream_closed()

    def _stream_closed(self) -> None:
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    # -- waiting ----------------------------------------------------------------------------------

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds; raise ChildError if the child's output ends or at the deadline.

        ``condition`` runs with the child's (reentrant) lock held, so it may read the kept lines.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                if self._open_streams == 0:
                    raise ChildError(f"{self.name()} ended (exit {self.proc.wait()}) before {what}: "
                                     f"{self._stderr()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildError(f"{self.name()}: no {what} within {timeout:g} s: {self._stderr()}")
                self._changed.wait(remaining)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait until the child exits and its output is read; return its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ChildError(f"{self.name()} still running after {timeout:g} s: {self.stderr()}") from exc
        with self._changed:
            self._changed.wait_for(lambda: self._open_streams == 0, timeout)
        return code

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child by PID if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """End the child if it still runs (SIGTERM, then SIGKILL)."""
        stop_process(self.proc)

    def name(self) -> str:
        """A short name for messages: the program and its PID."""
        return f"{Path(self.argv[0]).name} (pid {self.pid})"

    def _stderr(self) -> str:
        return "\n".join(self.stderr_lines[-40:]) or "(no stderr)"

    def stderr(self) -> str:
        """The child's last stderr lines, as one string."""
        with self._changed:
            return self._stderr()

    def snapshot(self) -> list[Any]:
        """The stdout items kept so far."""
        with self._changed:
            return list(self.lines)


def agent_command() -> str:
    """Path of the ``mace-agent`` executable next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("mace-agent")
    if beside.exists():
        return str(beside)
    found = shutil.which("mace-agent")
    if found is None:
        raise ChildError("mace-agent is not installed (pip install the project)")
    return found


def filter_text(dev_id: int, proc_id: int, corr: Sequence[str], info: Sequence[str] = (), *,
                in_corr: Sequence[str] | None = None, in_info: Sequence[str] | None = None) -> str:
    """A Protocol Filter in its text form (checked by the parser); ``in`` defaults to the ``out`` spec."""
    in_corr = corr if in_corr is None else in_corr
    in_info = info if in_info is None else in_info
    text = (f"dev-id: {dev_id} proc-id: {proc_id} in: corr: {' '.join(in_corr)} info: {' '.join(in_info)} "
            f"out: corr: {' '.join(corr)} info: {' '.join(info)}")
    return render(parse(text))


class AgentProcess(Child):
    """``mace-agent run --filter TEXT --format json [extra]`` in namespace ``ns``.

    Per-packet events go to ``events`` (at most ``keep``; ``event_count`` counts all), the final
    summary to ``summary``, anything else to ``lines``.
    """

    def __init__(self, topology: Topology, ns: str, filter_text: str, *, duration: float | None = None,
                 extra_args: Sequence[str] = (), keep: int = MAX_KEPT) -> None:
        self.events: list[Record] = []
        self.event_count = 0
        self.summary: Record | None = None
        self.attached = False
        argv = [agent_command(), "run", "--filter", filter_text, "--format", "json", *extra_args]
        if duration is not None:
            argv += ["--duration", str(duration)]
        super().__init__(topology, ns, argv, keep=keep)

    def _take(self, item: Any) -> None:
        if isinstance(item, dict) and isinstance(item.get("summary"), dict):
            self.summary = item["summary"]
        elif isinstance(item, dict) and "direction" in item:
            self.event_count += 1
            if len(self.events) < self.keep:
                self.events.append(item)
        elif len(self.lines) < 1000:
            self.lines.append(item)

    def _took_stderr(self, line: str) -> None:
        if ATTACHED in line:
            self.attached = True

    def wait_attached(self, timeout: float = 90.0) -> None:
        """Wait until the agent reports on stderr that its programs are attached."""
        self.wait_until(lambda: self.attached, timeout, "'attached' line")

    def wait_events(self, predicate: Callable[[Record], bool], count: int, timeout: float = 20.0, *,
                    allow_exit: bool = False) -> list[Record]:
        """Wait until ``count`` kept events satisfy ``predicate``; return the matching events so far.

        Raises ChildError at the deadline, and when the agent ends first unless ``allow_exit`` (then
        the caller's own assertions can show what was measured).
        """
        matched: list[Record] = []
        scanned = 0

        def enough() -> bool:
            nonlocal scanned
            matched.extend(e for e in self.events[scanned:] if predicate(e))
            scanned = len(self.events)
            return len(matched) >= count or (allow_exit and self._open_streams == 0)
        self.wait_until(enough, timeout, f"{count} matching events")
        return matched

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30.0) -> Record:
        """Signal the agent to stop, wait for it to exit and return its summary."""
        self.signal(sig)
        self.wait_exit(timeout)
        if self.summary is None:
            raise ChildError(f"{self.name()} printed no summary: {self.stderr()}")
        return self.summary

    def wait_new_events(self, seen: int, timeout: float) -> list[Record]:
        """The kept events after the first ``seen``, waiting up to ``timeout`` s for one (may be empty)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.events) > seen or self._open_streams == 0, timeout)
            return self.events[seen:]

    def snapshot_events(self) -> list[Record]:
        """The kept events so far."""
        with self._changed:
            return list(self.events)

    def events_of(self, direction: str) -> list[Record]:
        """The kept events of one direction ("out" or "in")."""
        with self._changed:
            return [e for e in self.events if e.get("direction") == direction]


def traffic_argv(command: str, *args: str) -> list[str]:
    """The command line of ``python -m mace_lab.traffic COMMAND ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mace_lab.traffic", command, *args]


class TrafficProcess(Child):
    """A :mod:`mace_lab.traffic` command in namespace ``ns``."""

    def __init__(self, topology: Topology, ns: str, command: str, *args: str, gated: bool = False) -> None:
        super().__init__(topology, ns, traffic_argv(command, *args), gated=gated)

    def _records(self, key: str) -> list[Record]:
        return [r for r in self.lines if isinstance(r, dict) and key in r]

    def wait_ready(self, timeout: float = 20.0) -> Record:
        """Wait for the ``{"ready": ...}`` line of a server or capture; return it."""
        self.wait_until(lambda: bool(self._records("ready")), timeout, "ready line")
        return self._records("ready")[0]

    def wait_done(self, timeout: float = 60.0) -> tuple[list[Record], Record]:
        """Wait for the final ``{"done": ...}`` line; return the per-request records and the done record."""
        self.wait_until(lambda: bool(self._records("done")), timeout, "done line")
        with self._changed:
            return self._records("seq"), self._records("done")[0]["done"]

    def records(self, key: str) -> list[Record]:
        """The JSON lines so far that hold ``key``."""
        with self._changed:
            return self._records(key)
