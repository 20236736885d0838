"""Writes each probe's ``status.results`` (and nothing else), only when it changed: a new state or
message, or the first samples, right away (the measurer wakes the publisher; at most every
``URGENT_INTERVAL_S``); mere count updates once per ``interval`` (default 5 s: every write also costs
the API server, etcd and every watcher of probes). Unchanged results are written again every
``HEARTBEAT_INTERVALS`` intervals (``results.heartbeatSeconds``), so that ``results.updated`` tells a
live agent from a frozen one; ``results.since`` is when the run's counting began (a restarted agent
starts from zero, and says so there).

Each write is a JSON merge patch of the status subresource holding only ``results`` (so the operator's
keys are never touched) and the probe's UID as a precondition (a probe re-created under the same name
never gets the old one's results).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION
from mace_agent.node.registry import Registry, Retired
from mace_agent.node.results import results
from mace_agent.node.runs import STOPPED, ProbeRun

log = logging.getLogger("mace_agent.node.publisher")

TICK_S = 0.5
URGENT_INTERVAL_S = 0.25
MIN_INTERVAL_S = 1.0
DEFAULT_INTERVAL_S = 5.0
HEARTBEAT_INTERVALS = 2


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Publisher:
    """A thread that compares every run's results with what it last wrote, and writes the difference."""

    def __init__(self, api: client.ApiClient, node: str, registry: Registry,
                 interval: float = DEFAULT_INTERVAL_S) -> None:
        self.api = client.CustomObjectsApi(api)
        self.node = node
        self.registry = registry
        self.interval = max(interval, MIN_INTERVAL_S)
        self.heartbeat = max(1, round(self.interval * HEARTBEAT_INTERVALS))
        self.writes = 0
        self.errors = 0
        self._last: dict[str, tuple[dict[str, Any], float]] = {}
        self._since: dict[str, tuple[ProbeRun, str | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.registry.measurer.news.set()
        self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        news = self.registry.measurer.news
        while not self._stop.is_set():
            news.wait(TICK_S)
            news.clear()
            if not self._stop.is_set():
                self.tick()

    def tick(self) -> None:
        """One pass over active and retired runs."""
        active = self.registry.active()
        for key, run in active.items():
            self._maybe_write(key, run.spec.uid, self._results(key, run, run.state))
        for item in self.registry.retired():
            if item.run is not None and item.run.alive:
                continue  # still detaching
            if item.final_stopped and not self._final(item):
                continue  # try again next tick
            self.registry.forget(item)
            if item.key not in active:
                self._last.pop(item.key, None)
                self._since.pop(item.key, None)

    def _results(self, key: str, run: ProbeRun, state: str) -> dict[str, Any]:
        """The run's results; ``since`` is when this agent first saw the run's counts."""
        run_since = self._since.get(key)
        if run_since is None or run_since[0] is not run:
            run_since = (run, None)
        if run_since[1] is None and run.snapshot is not None:
            run_since = (run, now_rfc3339())
        self._since[key] = run_since
        return results(state, run.message, self.node, run.snapshot, run_since[1], heartbeat=self.heartbeat,
                       scope=run.scope, targets=run.targets)

    def _final(self, item: Retired) -> bool:
        if item.run is None:
            body: dict[str, Any] = {"state": STOPPED, "node": self.node, "heartbeatSeconds": None}
        else:
            body = {**self._results(item.key, item.run, STOPPED), "heartbeatSeconds": None}
        last = self._last.get(item.key)
        if last is not None and time.monotonic() - last[1] < MIN_INTERVAL_S:
            return False
        return self._write(item.key, item.uid, body)

    def _maybe_write(self, key: str, uid: str, body: dict[str, Any]) -> None:
        last = self._last.get(key)
        if last is not None:
            before, when = last
            if before == body:
                if time.monotonic() - when >= self.heartbeat:
                    self._write(key, uid, body)
                return
            news = (body.get("state"), body.get("message")) != (before.get("state"), before.get("message"))
            urgent = news or (not before.get("matched") and bool(body.get("matched")))
            if time.monotonic() - when < (URGENT_INTERVAL_S if urgent else self.interval):
                return
        self._write(key, uid, body)

    def _write(self, key: str, uid: str, body: dict[str, Any]) -> bool:
        """Patch ``status.results``; True when written or when the probe is gone."""
        namespace, name = key.split("/", 1)
        patch = {"metadata": {"uid": uid} if uid else {},
                 "status": {"results": {**body, "updated": now_rfc3339()}}}
        try:
            self.api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, patch,
                                                           _request_timeout=10)
        except ApiException as error:
            if error.status in (404, 409):  # deleted, or re-created with another UID: not ours to write
                self._last[key] = (body, time.monotonic())
                return True
            self.errors += 1
            log.warning("writing results of %s failed: %s %s", key, error.status, error.reason)
            return False
        except Exception as error:  # connection trouble: keep the change and retry next tick
            self.errors += 1
            log.warning("writing results of %s failed: %s", key, error)
            return False
        self.writes += 1
        self._last[key] = (body, time.monotonic())
        return True
