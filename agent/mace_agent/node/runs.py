"""One engine run per LatencyProbe on this node, each on its own thread.

The run's thread polls its :class:`~mace_agent.engine.Engine`'s ring buffer, hands events to the
:class:`EventHub`, takes snapshots (the summaries everybody else reads), notices when the process or device
is gone, and asks for the detach on stop; nobody else touches that engine. Compiling/attaching and
detaching happen on one shared worker thread: one clang at a time bounds CPU spikes, and keeping bcc's
large allocations on a single thread keeps them in one malloc arena (compiling on each run's own thread
tripled the agent's memory: about 825 MiB instead of 250 MiB for 30 engines here).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from mace.grammar import FilterError, parse
from mace.models import ProtocolFilter
from mace_agent.config import EngineConfig
from mace_agent.engine import Engine
from mace_agent.kernel import KernelFeatureError
from mace_agent.node.events import EventHub
from mace_agent.summary import Snapshot
from mace_agent.target import DEVICE_REMOVED, PROCESS_EXITED, TargetError

ATTACHING, MEASURING, ERROR, STOPPED = "Attaching", "Measuring", "Error", "Stopped"
POLL_S = 1.0
"""The ring buffer wakes a run as soon as events arrive; this only bounds how late a stop is noticed."""
FIRST_SNAPSHOT_S = 1.0
"""Until the first samples show up, a snapshot is taken this often after events arrived; then every
``snapshot_interval`` (the publish interval). Reading the in-kernel histograms costs ~3 ms of CPU."""
IDLE_SNAPSHOT_S = 30.0
"""Without events a snapshot is still taken this often (counters that move without events: unmatched)."""
RUN_ENGINE = EngineConfig(stream=True, exact_values=1024)
"""How a probe's engine is set up: the stream on (the /events endpoint), 1024 latencies per direction
kept for exact percentiles (then the in-kernel histogram takes over). The rate limit is the probe's;
the agent adds its node settings (VXLAN ports)."""

_engine_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-worker")


@dataclass(frozen=True)
class RunSpec:
    """What one run measures: the probe's key, UID, resolved filter and event budget."""

    key: str
    uid: str
    filter_text: str
    max_events_per_second: int

    def parsed(self) -> ProtocolFilter:
        """The filter (raises FilterError)."""
        return parse(self.filter_text)


class ProbeRun:
    """A thread measuring one probe; read ``state``, ``message`` and ``snapshot`` from anywhere."""

    def __init__(self, spec: RunSpec, hub: EventHub, snapshot_interval: float = FIRST_SNAPSHOT_S,
                 engine_config: EngineConfig = RUN_ENGINE) -> None:
        self.spec = spec
        self.hub = hub
        self.snapshot_interval = snapshot_interval
        self.engine_config = engine_config
        self.state = ATTACHING
        self.message: str | None = None
        self.snapshot: Snapshot | None = None
        self.attach_seconds: float | None = None
        self.parked = False
        self._stop = threading.Event()
        self._rate = spec.max_events_per_second
        self._thread = threading.Thread(target=self._run, name=f"run {spec.key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def park(self, why: str) -> None:
        """Never start this run (``parked``): it shows as Error with ``why``."""
        self.parked = True
        self._fail(why)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the run to detach and wait (bounded) until it has."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def rate(self) -> int:
        """The event budget in force (events per second)."""
        return self._rate

    def set_rate(self, events_per_second: int) -> None:
        """Change the event budget without restarting (applied within one poll)."""
        self._rate = events_per_second

    def _fail(self, message: str) -> None:
        self.message = message
        self.state = ERROR

    def _run(self) -> None:
        try:
            flt = self.spec.parsed()
        except FilterError as error:
            self._fail(f"invalid filter in status: {error}")
            return
        engine = Engine(flt, replace(self.engine_config, rate_limit=self._rate))
        if self._stop.is_set():
            return
        try:
            _engine_worker.submit(engine.start).result()
        except (TargetError, KernelFeatureError, ValueError) as error:
            _engine_worker.submit(engine.close).result()
            self._fail(str(error))
            return
        try:
            self.attach_seconds = engine.attach_seconds
            self.snapshot = engine.snapshot()
            self.state = MEASURING
            self._measure(engine, flt)
        except Exception as error:  # a bcc failure must end this run only, not the agent
            self._fail(f"engine failed: {type(error).__name__}: {error}")
        finally:
            _engine_worker.submit(engine.close).result()
            if self.state != ERROR:
                self.state = STOPPED

    def _measure(self, engine: Engine, flt: ProtocolFilter) -> None:
        rate = self._rate
        fresh = False
        last = time.monotonic()
        while not self._stop.is_set():
            events = engine.poll(POLL_S)
            if events:
                fresh = True
                if self.hub.wanted(self.spec.key):
                    self.hub.publish(self.spec.key, events)
            if self._rate != rate:
                rate = self._rate
                engine.set_rate_limit(rate)
            now = time.monotonic()
            wait = self.snapshot_interval if _has_samples(self.snapshot) else FIRST_SNAPSHOT_S
            if (fresh and now - last >= wait) or now - last >= max(IDLE_SNAPSHOT_S, wait):
                self.snapshot = engine.snapshot()
                fresh, last = False, now
            reason = engine.stop_reason()
            if reason is not None:
                self.snapshot = engine.snapshot()
                if reason == PROCESS_EXITED:
                    self._fail(f"process {flt.proc_id} exited")
                elif reason == DEVICE_REMOVED:
                    self._fail(f"outer device {flt.dev_id} was removed")
                else:
                    self._fail(reason)
                return
        self.snapshot = engine.snapshot()


def _has_samples(snapshot: Snapshot | None) -> bool:
    return snapshot is not None and any(s.count for s in snapshot.directions.values())
