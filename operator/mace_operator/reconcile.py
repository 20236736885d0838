"""The reconciler: brings one probe's operator-owned status in line with its pod and node.

Every trigger (the probe changed, its pod changed, an agent appeared, the agent reported an
error, a retry, the probe's duration ran out or its agent is overdue with results) asks for the
same idempotent pass, run in the
background with at most one pass running and one waiting per probe. A pass writes only when
the status would change, so the operator's restart (which re-runs every probe) writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from mace.probe import ConditionType, Phase, Reason
from mace_operator.agents import AgentClient, AgentEndpoint, ResolveError
from mace_operator.conditions import find
from mace_operator.decide import (
    Outcome,
    completion_time,
    differs,
    may_release,
    needs_resolve,
    not_reporting,
    report_due,
    resolved_filter,
    spec_problems,
    status_patch,
)
from mace_operator.pods import PodProblem, target

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a probe."""

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
NOT_REPORTING_RETRY_SECONDS = 5.0
"""How often a probe whose agent stopped reporting asks that agent again (a resolve) whether it is back."""
STOP_POLL_SECONDS = 0.2
"""How often a deleted probe's status is read while waiting for the agent to stop its run."""


def probe_key(probe: Mapping[str, Any]) -> str:
    """``namespace/name`` of a probe object (how the agent names its runs)."""
    meta = probe.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Api(Protocol):
    """The API calls a pass makes (see :class:`mace_operator.kube.Kube`)."""

    async def get_probe(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_probes(self, namespace: str) -> list[dict[str, Any]]: ...
    async def remove_finalizer(self, namespace: str, name: str, finalizers: list[str],
                               finalizer: str) -> None: ...
    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_probe_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...


class StopPoller:
    """Reads the statuses of deleted probes for everyone waiting on them: one list per namespace and
    poll, not one read per probe (200 deletions polled one by one flooded the API server and the
    operator's own connection pool, which made each deletion slower)."""

    def __init__(self, api: Api, interval: float = STOP_POLL_SECONDS) -> None:
        self.api = api
        self.interval = interval
        self._waiters: dict[Key, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def next_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The probe's status at the next poll; None once the probe is gone."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._waiters.setdefault((namespace, name), []).append(future)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop(), name="deleted probes' statuses")
        return await future

    async def _loop(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.interval)
            waiting, self._waiters = self._waiters, {}
            for namespace in sorted({ns for ns, _ in waiting}):
                keys = [key for key in waiting if key[0] == namespace]
                try:
                    found = {str((p.get("metadata") or {}).get("name")): p
                             for p in await self.api.list_probes(namespace)}
                except Exception as error:  # the API server is unreachable: ask again next poll
                    log.warning("listing the probes of %s failed: %s", namespace, error)
                    for key in keys:
                        self._waiters.setdefault(key, []).extend(waiting[key])
                    continue
                for key in keys:
                    probe = found.get(key[1])
                    status = None if probe is None else dict(probe.get("status") or {})
                    for future in waiting[key]:
                        if not future.done():
                            future.set_result(status)


def utcnow() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


class Reconciler:
    """Runs reconciliation passes; ``find_agent(node)`` names the ready agent of a node."""

    def __init__(self, api: Api, agents: AgentClient,
                 find_agent: Callable[[str], AgentEndpoint | None] = lambda _: None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.api = api
        self.agents = agents
        self.find_agent = find_agent
        self.clock = clock
        self._locks: dict[Key, asyncio.Lock] = {}
        self._waiting: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._report_timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self.stops = StopPoller(api)

    def request(self, namespace: str, name: str) -> None:
        """Ask for a pass over the probe soon (a no-op if one is already waiting to start)."""
        key = (namespace, name)
        if key in self._waiting:
            return
        self._waiting.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key), name=f"reconcile {namespace}/{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, namespace: str, name: str) -> None:
        """Drop timers and retry state of a deleted probe."""
        key = (namespace, name)
        self._cancel_timer(key)
        handle = self._report_timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._failures.pop(key, None)

    def expect_report(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Pass over a Measuring probe again once its agent is overdue with results (see ``report_due``)."""
        key = (namespace, name)
        handle = self._report_timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        due = report_due(status)
        if due is None:
            return

        def fire() -> None:
            self._report_timers.pop(key, None)
            self.request(*key)

        delay = max(0.0, (due - self.clock()).total_seconds())
        self._report_timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    async def drain(self) -> None:
        """Wait for the passes in flight (used at shutdown)."""
        for handle in [*self._timers.values(), *self._report_timers.values()]:
            handle.cancel()
        self._timers.clear()
        self._report_timers.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, key: Key) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                self._waiting.discard(key)
                await self.reconcile(*key)
        except Exception:
            log.exception("reconciling %s/%s failed; retrying", *key)
            self._retry_later(key)
        finally:
            if not lock.locked() and key not in self._waiting:
                self._locks.pop(key, None)

    def _cancel_timer(self, key: Key) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _at(self, key: Key, delay: float) -> None:
        self._cancel_timer(key)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.request(*key)

        self._timers[key] = loop.call_later(max(0.0, delay), fire)

    def _retry_later(self, key: Key) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._at(key, min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (failures - 1)))

    async def wait_until_stopped(self, namespace: str, name: str, status: dict[str, Any], deadline: datetime,
                                 agent_on: Callable[[str], bool]) -> None:
        """Return once a deleted probe's run has stopped, no agent runs it, or ``deadline`` passed."""
        self.forget(namespace, name)
        while True:
            node = status.get("node")
            if may_release(status, agent_on(str(node)) if node else False, self.clock(), deadline):
                return
            polled = await self.stops.next_status(namespace, name)
            if polled is None:
                return
            status = polled

    async def reconcile(self, namespace: str, name: str) -> None:
        """One pass: read the probe and its pod, resolve if needed, write the status if it changed."""
        key = (namespace, name)
        probe = await self.api.get_probe(namespace, name)
        if probe is None or (probe.get("metadata") or {}).get("deletionTimestamp"):
            self.forget(namespace, name)
            return
        status: dict[str, Any] = probe.get("status") or {}
        generation = (probe.get("metadata") or {}).get("generation")
        outcome = await self._decide(namespace, probe, status, generation)
        if outcome is not None:
            patch = status_patch(outcome, status, generation, self.clock())
            if differs(patch, status):
                await self.api.patch_probe_status(namespace, name, patch)
                log.info("probe %s/%s: %s (%s) %s", namespace, name, outcome.phase.value,
                         outcome.reason.value, outcome.message)
            status = {**status, **patch}
        self._schedule(key, probe, status, outcome)

    def _schedule(self, key: Key, probe: dict[str, Any], status: dict[str, Any],
                  outcome: Outcome | None) -> None:
        self.expect_report(*key, status)
        if outcome is not None and outcome.reason in (Reason.AgentError, Reason.ResolveFailed,
                                                      Reason.AgentAtCapacity):
            self._retry_later(key)
            return
        self._failures.pop(key, None)
        self._cancel_timer(key)
        if outcome is not None and outcome.reason is Reason.AgentNotReporting:
            self._at(key, NOT_REPORTING_RETRY_SECONDS)
            return
        spec, _ = spec_problems(probe.get("spec") or {})
        ends = completion_time(spec, status) if spec is not None else None
        if ends is not None and status.get("phase") == Phase.Measuring.value:
            self._at(key, (ends - self.clock()).total_seconds())

    async def _decide(self, namespace: str, probe: dict[str, Any], status: dict[str, Any],
                      generation: int | None) -> Outcome | None:
        """The outcome to write, or None to leave the status as it is."""
        spec, problems = spec_problems(probe.get("spec") or {})
        if spec is None:
            return Outcome(Phase.Failed, Reason.InvalidFilter, problems)
        ends = completion_time(spec, status)
        if ends is not None and self.clock() >= ends:
            return Outcome(Phase.Completed, Reason.Completed,
                           f"measured for durationSeconds ({spec.duration_seconds} s)")
        pod = await self.api.get_pod(namespace, spec.pod)
        found = target(pod, spec.pod, namespace, spec.container)
        if isinstance(found, PodProblem):
            return Outcome(Phase.Failed if found.final else Phase.Pending, found.reason, found.message,
                           node=found.node)
        stale = not_reporting(status, self.clock())
        if stale is not None:
            return Outcome(Phase.Pending, Reason.AgentNotReporting, stale, node=found.node)
        if not needs_resolve(status, found, generation):
            return None
        # A probe whose agent went silent asks it (a resolve) whether it is back; until it answers, the
        # probe keeps saying that the agent is not reporting.
        waiting = find(status.get("conditions"), ConditionType.Measuring) or {}
        silent = (Outcome(Phase.Pending, Reason.AgentNotReporting, str(waiting.get("message") or ""),
                          node=found.node)
                  if waiting.get("reason") == Reason.AgentNotReporting.value
                  and status.get("node") == found.node else None)
        agent = self.find_agent(found.node)
        if agent is None:
            return silent or Outcome(Phase.Pending, Reason.NoAgentOnNode,
                                     f"no ready Mace agent on node {found.node}", node=found.node)
        try:
            resolution = await self.agents.resolve(agent, found.container_ids, found.pod_ip,
                                                   spec.outer_device, probe=probe_key(probe))
        except ResolveError as error:
            return silent or Outcome(Phase.Pending, error.reason, error.message, node=found.node)
        text = resolved_filter(spec, resolution)
        return Outcome(Phase.Measuring, Reason.Measuring, f"filter {text}", node=found.node, target=found,
                       resolution=resolution, filter=text)
