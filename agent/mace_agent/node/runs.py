"""The node's one engine, and one :class:`ProbeRun` per LatencyProbe measured on it.

The :class:`Measurer` compiles and attaches the program set once (on its own thread, when the
agent starts) and then reads it for every run: it polls the shared ring buffer, hands each run's
events to the :class:`EventHub`, takes snapshots (the summaries everybody else reads) and notices
when a run's process or device is gone. Adding or removing a run writes map entries only, at once,
on the caller's thread (the control loop): no compile, no attach, and the other runs' packets in
flight are untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from mace.grammar import FilterError, parse
from mace.models import ProtocolFilter
from mace.probe import Scope
from mace_agent.config import EngineConfig
from mace_agent.engine import NodeEngine, Probe, ProbeLimitError, ProbeSpec
from mace_agent.kernel import KernelFeatureError
from mace_agent.node.events import EventHub
from mace_agent.summary import Snapshot
from mace_agent.target import DEVICE_REMOVED, PROCESS_EXITED, TargetError

log = logging.getLogger("mace_agent.node.runs")

ATTACHING, MEASURING, ERROR, STOPPED = "Attaching", "Measuring", "Error", "Stopped"
POLL_S = 0.05
"""How long one poll of the ring buffer waits: it also bounds how late a gone target is noticed."""
WATCH_S = 1.0
"""How often every run's process and device are checked."""
FIRST_SNAPSHOT_S = 0.25
"""Until the first samples show up, a snapshot is taken this often after events arrived; then every
``snapshot_interval`` (the publish interval)."""
IDLE_SNAPSHOT_S = 30.0
"""Without events a snapshot is still taken this often (counters that move without events: unmatched)."""
RUN_ENGINE = EngineConfig(stream=True, exact_values=1024)
"""How the node's engine is set up: the stream on (the /events endpoint), 1024 latencies per direction
and probe kept for exact percentiles (then the in-kernel histogram takes over). The rate limit is each
probe's; the agent adds its node settings (VXLAN ports, probe slots)."""


@dataclass(frozen=True)
class RunSpec:
    """What one run measures: the probe's key, UID, resolved filter, the PIDs of its containers
    (every process of their cgroups is measured) and its event budget."""

    key: str
    uid: str
    filter_text: str
    max_events_per_second: int
    proc_ids: tuple[int, ...] = ()

    def parsed(self) -> ProtocolFilter:
        """The filter (raises FilterError)."""
        return parse(self.filter_text)


class ProbeRun:
    """One probe on the node's engine; read ``state``, ``message`` and ``snapshot`` from anywhere."""

    def __init__(self, spec: RunSpec, measurer: Measurer, snapshot_interval: float) -> None:
        self.spec = spec
        self.measurer = measurer
        self.snapshot_interval = snapshot_interval
        self.state = ATTACHING
        self.message: str | None = None
        self.snapshot: Snapshot | None = None
        self.attach_seconds: float | None = None
        self.probe: Probe | None = None
        self.parked = False
        self._rate = spec.max_events_per_second
        self._fresh = False
        self._last_snapshot = 0.0

    @property
    def alive(self) -> bool:
        """Whether the run still holds map entries (false once removed)."""
        return self.probe is not None

    @property
    def rate(self) -> int:
        """The event budget in force (events per second)."""
        return self._rate

    @property
    def scope(self) -> Scope | None:
        """What the run measures: the containers' cgroups, or (fallback) their processes."""
        if self.probe is None:
            return None
        return Scope.process if self.probe.scope_fallback else Scope.cgroup

    @property
    def targets(self) -> int | None:
        return None if self.probe is None else len(self.probe.target_keys)

    def park(self, why: str) -> None:
        """Never measure this run (``parked``): it shows as Error with ``why``."""
        self.parked = True
        self.fail(why)

    def fail(self, message: str) -> None:
        self.message = message
        self.state = ERROR
        self.measurer.news.set()

    def set_rate(self, events_per_second: int) -> None:
        """Change the event budget without restarting."""
        self._rate = events_per_second
        if self.probe is not None:
            self.measurer.engine.set_rate(self.probe, events_per_second)

    def start(self) -> None:
        """Add the probe to the node's engine (at once if it is attached, else once it is)."""
        self.measurer.attach(self)

    def stop(self) -> None:
        """Remove the probe's entries (at once: map writes only)."""
        self.measurer.detach(self)

    def probe_spec(self) -> ProbeSpec:
        """The engine's view of this run (raises FilterError)."""
        return ProbeSpec(self.spec.parsed(), Scope.cgroup, self.spec.proc_ids, self._rate, stream=True)

    def due(self, now: float) -> bool:
        """Whether a new snapshot is due (called by the measurer)."""
        wait = self.snapshot_interval if _has_samples(self.snapshot) else FIRST_SNAPSHOT_S
        return (self._fresh and now - self._last_snapshot >= wait) \
            or now - self._last_snapshot >= max(IDLE_SNAPSHOT_S, wait)

    def took(self, snapshot: Snapshot, now: float) -> None:
        first = not _has_samples(self.snapshot) and _has_samples(snapshot)
        self.snapshot, self._fresh, self._last_snapshot = snapshot, False, now
        if first:
            self.measurer.news.set()


def _has_samples(snapshot: Snapshot | None) -> bool:
    return snapshot is not None and any(s.count for s in snapshot.directions.values())


class Measurer:
    """The node's engine and the thread reading it for every run."""

    def __init__(self, hub: EventHub, config: EngineConfig) -> None:
        self.hub = hub
        self.engine = NodeEngine(config)
        self.error: str | None = None
        self.news = threading.Event()
        """Set when a run has news to write at once (attached, first samples, failed)."""
        self._lock = threading.Lock()
        self._runs: dict[int, ProbeRun] = {}
        self._waiting: list[ProbeRun] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="measurer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def attach(self, run: ProbeRun) -> None:
        """Add a run's probe, or keep it until the engine is attached."""
        with self._lock:
            if not self._ready.is_set():
                self._waiting.append(run)
                return
        self._add(run)

    def _add(self, run: ProbeRun) -> None:
        if self.error is not None:
            run.fail(self.error)
            return
        began = time.monotonic()
        try:
            probe = self.engine.add(run.probe_spec())
        except FilterError as error:
            run.fail(f"invalid filter in status: {error}")
            return
        except (TargetError, ProbeLimitError, KernelFeatureError, ValueError) as error:
            run.fail(str(error))
            return
        run.attach_seconds = time.monotonic() - began
        with self._lock:
            run.probe = probe
            self._runs[id(run)] = run
        run.took(self.engine.snapshot(probe), time.monotonic())
        run.state = MEASURING
        self.news.set()

    def detach(self, run: ProbeRun) -> None:
        """Remove a run's probe (its last snapshot stays readable)."""
        with self._lock:
            if run in self._waiting:
                self._waiting.remove(run)
            probe, run.probe = run.probe, None
            if probe is not None:
                self._runs.pop(id(run), None)
        if probe is not None:
            try:
                run.snapshot = self.engine.snapshot(probe)
            except Exception as error:  # the engine may be closing
                log.warning("last snapshot of %s failed: %s", run.spec.key, error)
            self.engine.remove(probe)

    def stop(self) -> None:
        """Detach everything and close the engine."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        try:
            self.engine.start()
        except (KernelFeatureError, ValueError) as error:
            self.error = str(error)
        except Exception as error:  # a bcc failure must be reported, not kill the agent
            self.error = f"engine failed: {type(error).__name__}: {error}"
        if self.error is not None:
            log.error("the node's engine could not attach: %s", self.error)
        with self._lock:
            self._ready.set()
            waiting, self._waiting = self._waiting, []
        for run in waiting:
            self._add(run)
        if self.error is not None:
            return
        try:
            self._measure()
        except Exception as error:
            self.error = f"engine failed: {type(error).__name__}: {error}"
            log.exception("the node's engine failed")
            for run in list(self._runs.values()):
                run.fail(self.error)
        finally:
            self.engine.close()

    def _measure(self) -> None:
        next_watch = time.monotonic() + WATCH_S
        while not self._stop.is_set():
            self.engine.poll(POLL_S)
            with self._lock:
                runs = list(self._runs.values())
            now = time.monotonic()
            for run in runs:
                probe = run.probe
                if probe is None:
                    continue
                events = probe.take_events()
                if events:
                    run._fresh = True
                    if self.hub.wanted(run.spec.key):
                        self.hub.publish(run.spec.key, events)
                if run.due(now):
                    run.took(self.engine.snapshot(probe), now)
            if now >= next_watch:
                next_watch = now + WATCH_S
                for run in runs:
                    self._watch(run)

    def _watch(self, run: ProbeRun) -> None:
        probe = run.probe
        reason = self.engine.stop_reason(probe) if probe is not None else None
        if reason is None or probe is None:
            return
        flt = probe.spec.filter
        self.detach(run)
        if reason == PROCESS_EXITED:
            run.fail(f"process {flt.proc_id} exited")
        elif reason == DEVICE_REMOVED:
            run.fail(f"outer device {flt.dev_id} was removed")
        else:
            run.fail(reason)
