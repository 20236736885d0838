"""Fan-out of per-packet events to ``/events`` subscribers, with bounded queues.

A subscriber that reads too slowly loses events (counted), never the agent's memory: each subscriber
holds at most ``queue_size`` events, and at most ``max_subscribers`` can be connected at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

from mace_agent.events import Event

DEFAULT_QUEUE = 4096
DEFAULT_SUBSCRIBERS = 32


class TooManySubscribers(Exception):
    """All subscriber slots are taken."""


class Subscription:
    """One ``/events`` client: the probe it follows (None: all) and its queue of event lines."""

    def __init__(self, probe: str | None, size: int) -> None:
        self.probe = probe
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=size)


class EventHub:
    """Where probe runs put their events and ``/events`` clients take them."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE, max_subscribers: int = DEFAULT_SUBSCRIBERS) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self.lost_total = 0

    def subscribe(self, probe: str | None) -> Subscription:
        """A new subscription (raise TooManySubscribers when full)."""
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                raise TooManySubscribers(f"{self.max_subscribers} event streams are open already")
            sub = Subscription(probe, self.queue_size)
            self._subs.append(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def wanted(self, probe: str) -> bool:
        """Whether anybody follows ``probe`` right now (runs skip the work otherwise)."""
        with self._lock:
            return any(s.probe is None or s.probe == probe for s in self._subs)

    def publish(self, probe: str, events: Sequence[Event]) -> None:
        """Hand ``events`` of ``probe`` to every subscriber that follows it."""
        with self._lock:
            subs = [s for s in self._subs if s.probe is None or s.probe == probe]
        for sub in subs:
            for event in events:
                try:
                    sub.lines.put_nowait({"probe": probe, **event.to_dict()})
                except queue.Full:
                    with self._lock:
                        self.lost_total += 1
