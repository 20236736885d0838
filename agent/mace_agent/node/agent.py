"""The node agent as one object: control loop, runs, status publisher, event hub and HTTP endpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kubernetes import client

from mace_agent.config import DEFAULT_MAX_PROBES, DEFAULT_VXLAN_PORTS
from mace_agent.node.auth import TokenReviewer
from mace_agent.node.control import Controller
from mace_agent.node.events import EventHub
from mace_agent.node.metrics import AgentHealth
from mace_agent.node.publisher import Publisher
from mace_agent.node.registry import Registry
from mace_agent.node.runs import RUN_ENGINE
from mace_agent.node.server import AgentHTTPServer

log = logging.getLogger("mace_agent.node")


@dataclass(frozen=True)
class AgentSettings:
    """How ``mace-agent serve`` was configured."""

    node: str
    listen: tuple[str, int]
    resolve_users: tuple[str, ...]
    """Usernames allowed to call /resolve; empty: no authentication (only for local experiments)."""
    max_probes: int = DEFAULT_MAX_PROBES
    map_entries: int = RUN_ENGINE.map_entries
    publish_interval: float = 5.0
    vxlan_ports: tuple[int, ...] = DEFAULT_VXLAN_PORTS


class Agent:
    """Wires the pieces together; :meth:`serve` blocks until :meth:`shutdown`."""

    def __init__(self, settings: AgentSettings, api: client.ApiClient, watch_api: client.ApiClient) -> None:
        self.settings = settings
        self.node = settings.node
        self.hub = EventHub()
        self.registry = Registry(self.hub, settings.max_probes, settings.publish_interval,
                                 replace(RUN_ENGINE, vxlan_ports=settings.vxlan_ports,
                                         map_entries=settings.map_entries))
        self.controller = Controller(watch_api, settings.node, self.registry)
        self.publisher = Publisher(api, settings.node, self.registry, settings.publish_interval)
        self.reviewer = TokenReviewer(api, settings.resolve_users) if settings.resolve_users else None
        self.server = AgentHTTPServer(settings.listen, self)
        self._stopped = threading.Event()

    def health(self) -> AgentHealth:
        return AgentHealth(node=self.node, connected=self.controller.connected,
                           synced=self.controller.synced.is_set(), watch_errors=self.controller.errors,
                           status_writes=self.publisher.writes, status_write_errors=self.publisher.errors,
                           event_subscribers=self.hub.subscribers, events_lost=self.hub.lost_total)

    def health_problems(self) -> list[str]:
        problems: Iterable[tuple[bool, str]] = (
            (self.controller.alive, "the control loop has stopped"),
            (self.publisher.alive, "the status publisher has stopped"))
        return [message for ok, message in problems if not ok]

    def serve(self) -> None:
        """Start the loops and serve HTTP until :meth:`shutdown`; then detach every probe."""
        self.controller.start()
        self.publisher.start()
        host, port = self.server.server_address[:2]
        log.info("agent for node %s listening on %s:%s", self.node, host, port)
        try:
            self.server.serve_forever(poll_interval=1.0)
        finally:
            self.controller.stop()
            self.registry.stop_all()
            self.publisher.stop()
            self.server.server_close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Make :meth:`serve` return (callable from a signal handler's thread or any other)."""
        threading.Thread(target=self.server.shutdown, daemon=True).start()
