"""The control loop: watch LatencyProbes and keep one engine run per probe resolved for this node.

Desired = probes with ``status.node`` == this node, ``status.filter`` set, ``status.phase`` == Measuring and
no deletionTimestamp. A changed filter (the operator re-resolved after a restart) replaces the run; a
changed ``spec.maxEventsPerSecond`` is applied to the running one. A probe being deleted, or Completed or
Failed, has its run stopped and ``results.state: Stopped`` written once the programs are detached. The loop
lists first (so a restarted agent resumes every probe), then watches from that list's resourceVersion,
and lists again after any error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION
from mace_agent.node.registry import Registry
from mace_agent.node.runs import RunSpec

log = logging.getLogger("mace_agent.node.control")

WATCH_TIMEOUT_S = 240
"""Server-side watch timeout; the watch is simply renewed after it."""
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30
MAX_BACKOFF_S = 30.0
DEFAULT_EVENTS_PER_SECOND = 1000


def probe_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def desired_run(obj: Mapping[str, Any], node: str) -> RunSpec | None:
    """The run this node should have for ``obj``, or None."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    if meta.get("deletionTimestamp") or status.get("node") != node or status.get("phase") != "Measuring":
        return None
    text = status.get("filter")
    if not isinstance(text, str) or not text:
        return None
    rate = spec.get("maxEventsPerSecond")
    if not isinstance(rate, int) or rate <= 0:
        rate = DEFAULT_EVENTS_PER_SECOND
    pids = tuple(p for p in status.get("procIds") or () if isinstance(p, int) and p > 0)
    return RunSpec(key=probe_key(obj), uid=str(meta.get("uid", "")), filter_text=text,
                   max_events_per_second=rate, proc_ids=pids)


def ends_measurement(obj: Mapping[str, Any]) -> bool:
    """Whether the probe is being deleted or finished for good (its results must say Stopped)."""
    meta = obj.get("metadata") or {}
    phase = (obj.get("status") or {}).get("phase")
    return bool(meta.get("deletionTimestamp")) or phase in ("Completed", "Failed")


class Controller:
    """Runs the list/watch loop on its own thread and applies every probe to the registry."""

    def __init__(self, api: client.ApiClient, node: str, registry: Registry) -> None:
        self.api = client.CustomObjectsApi(api)
        self.node = node
        self.registry = registry
        self.synced = threading.Event()
        self.connected = False
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- applying objects -------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Make the registry match one probe object."""
        key = probe_key(obj)
        want = desired_run(obj, self.node)
        current = self.registry.get(key)
        if want is None:
            status = obj.get("status") or {}
            final = status.get("node") == self.node and ends_measurement(obj)
            if current is not None:
                self.registry.retire(key, final_stopped=final)
            elif final and (status.get("results") or {}).get("state") != "Stopped":
                self.registry.mark_stopped(key, str((obj.get("metadata") or {}).get("uid", "")))
            return
        if current is not None and (current.spec.filter_text, current.spec.uid, current.spec.proc_ids) \
                == (want.filter_text, want.uid, want.proc_ids):
            if current.rate != want.max_events_per_second:
                current.set_rate(want.max_events_per_second)
            return  # unchanged, even in Error: the same filter would fail the same way
        log.info("probe %s: measuring %s", key, want.filter_text)
        self.registry.start(want)

    def remove(self, obj: Mapping[str, Any]) -> None:
        """The probe object is gone from the API (its finalizer was released)."""
        self.registry.retire(probe_key(obj), final_stopped=False)

    def resync(self, items: list[Mapping[str, Any]]) -> None:
        """Apply a full list: probes missing from it are gone."""
        seen = set()
        for obj in items:
            seen.add(probe_key(obj))
            self.apply(obj)
        for key in set(self.registry.active()) - seen:
            self.registry.retire(key, final_stopped=False)

    # -- list and watch ---------------------------------------------------------------------------

    def _list(self) -> str:
        listing = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=30)
        if not isinstance(listing, dict):
            raise TypeError(f"listing LatencyProbes returned {type(listing).__name__}, not an object")
        self.resync(list(listing.get("items") or []))
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> str:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        events = stream.stream(  # type: ignore[no-untyped-call]
            self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL, resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True, _request_timeout=READ_TIMEOUT_S)
        for event in events:
            if self._stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]
                break
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                raise ApiException(status=int(obj.get("code", 500)), reason=str(obj.get("message", "")))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind in ("ADDED", "MODIFIED"):
                self.apply(obj)
            elif kind == "DELETED":
                self.remove(obj)
        return version

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                version = self._list()
                self.connected = True
                self.synced.set()
                backoff = 1.0
                while not self._stop.is_set():
                    version = self._watch(version)
            except ApiException as error:
                if error.status != 410:  # 410: our resourceVersion is too old; list again at once
                    self._failed(f"API error {error.status}: {error.reason}")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as error:  # connection refused/reset, timeouts: list again after a pause
                self._failed(f"{type(error).__name__}: {error}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _failed(self, message: str) -> None:
        self.connected = False
        self.errors += 1
        log.warning("watching LatencyProbes failed (%s); listing again", message)
