"""The agent's runs: which probe is measured by which :class:`ProbeRun`, and which runs are winding down.

The control loop changes it (start, replace, retire), the status publisher and the HTTP endpoint read it.
Every run measures on the node's one engine (:class:`~mace_agent.node.runs.Measurer`). A retired run has
its map entries removed at once; if it was retired because its probe is being deleted (or completed), its
last write is ``results.state: Stopped``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from mace_agent import layout
from mace_agent.config import EngineConfig
from mace_agent.node.events import EventHub
from mace_agent.node.runs import RUN_ENGINE, Measurer, ProbeRun, RunSpec


@dataclass
class Retired:
    """A run that was asked to stop; ``final_stopped``: write ``Stopped`` once it has detached.

    ``run`` is None for a probe whose measurement ended while no run of this agent measured it
    (e.g. it was deleted while the agent restarted): only ``Stopped`` is written.
    """

    key: str
    uid: str
    run: ProbeRun | None
    final_stopped: bool


class Registry:
    """Active runs by probe key (``namespace/name``), bounded by ``max_probes``."""

    def __init__(self, hub: EventHub, max_probes: int, snapshot_interval: float,
                 engine_config: EngineConfig = RUN_ENGINE) -> None:
        self.hub = hub
        self.max_probes = max_probes
        self.snapshot_interval = snapshot_interval
        # four slots a probe: one per container it measures, and a freed slot rests for a while after
        # it leaves (see NodeEngine.remove)
        slots = min(layout.MAX_PROBES, 4 * max_probes)
        self.measurer = Measurer(hub, replace(engine_config, max_probes=slots))
        self.measurer.start()
        self._lock = threading.Lock()
        self._active: dict[str, ProbeRun] = {}
        self._retired: list[Retired] = []

    def active(self) -> dict[str, ProbeRun]:
        with self._lock:
            return dict(self._active)

    def has_room(self, key: str | None) -> bool:
        """Whether a run for ``key`` (None: a new probe) fits within ``max_probes``."""
        with self._lock:
            running = [k for k, r in self._active.items() if not r.parked and k != key]
            return len(running) < self.max_probes or (key is not None and key in running)

    def get(self, key: str) -> ProbeRun | None:
        with self._lock:
            return self._active.get(key)

    def start(self, spec: RunSpec) -> ProbeRun:
        """Start a run for ``spec`` (retiring the key's current run).

        Over ``max_probes`` the run is parked in Error instead; it starts when another run is retired.
        """
        run = ProbeRun(spec, self.measurer, self.snapshot_interval)
        with self._lock:
            self._retire_locked(spec.key, final_stopped=False)
            running = sum(not r.parked for r in self._active.values())
            self._active[spec.key] = run
            if running >= self.max_probes:
                run.park(f"this agent already measures its limit of {self.max_probes} probes")
                return run
        run.start()
        return run

    def _retire_locked(self, key: str, final_stopped: bool) -> ProbeRun | None:
        run = self._active.pop(key, None)
        if run is not None:
            run.stop()
            self._retired.append(Retired(key, run.spec.uid, run, final_stopped))
        return run

    def retire(self, key: str, final_stopped: bool) -> ProbeRun | None:
        """Stop the key's run without waiting (and start a parked run in its place); returns it."""
        with self._lock:
            run = self._retire_locked(key, final_stopped)
            parked = next((r for r in self._active.values() if r.parked), None) \
                if run is not None and not run.parked else None
        if parked is not None:
            self.start(parked.spec)
        return run

    def mark_stopped(self, key: str, uid: str) -> None:
        """Have ``Stopped`` written for a probe this agent has no run for (once)."""
        with self._lock:
            if key not in self._active and not any(r.key == key for r in self._retired):
                self._retired.append(Retired(key, uid, None, final_stopped=True))

    def retired(self) -> list[Retired]:
        with self._lock:
            return list(self._retired)

    def forget(self, item: Retired) -> None:
        with self._lock:
            if item in self._retired:
                self._retired.remove(item)

    def stop_all(self) -> None:
        """Detach everything (agent shutdown)."""
        with self._lock:
            runs = list(self._active.values()) + [r.run for r in self._retired if r.run is not None]
            self._active.clear()
            self._retired.clear()
        for run in runs:
            run.stop()
        self.measurer.stop()
