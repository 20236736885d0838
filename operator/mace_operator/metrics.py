"""The operator's ``/metrics`` (``mace-operator --metrics ADDR``): each probe's phase as the operator sees it.

``mace_probe_phase{namespace,probe,phase}`` has one series per phase and probe, 1 for the probe's current
phase and 0 for the others (as kube-state-metrics shows a Pod's phase). It is read at scrape time from a
kopf index of the watched probes, so a deleted probe's series go with it; a probe the operator has not yet
written a phase for counts as Pending. The agents' ``mace_probe_state`` covers only probes some agent
runs: this covers those still waiting for one, or failed. prometheus_client's ``process_*`` metrics too.

The page is served by aiohttp on kopf's own event loop (where the index is written), never blocking it.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from mace.probe import GROUP, PLURAL, VERSION, Phase

Key = tuple[str, str]
"""(namespace, name) of a probe."""
INDEX = "probe_phases"
"""The kopf index of every probe's phase (by its key)."""


def probe_phase(namespace: str | None, name: str, status: Mapping[str, Any],
                meta: Mapping[str, Any]) -> dict[Key, str] | None:
    """The index entry of one probe: its phase (Pending if none yet); none once it is being deleted."""
    if meta.get("deletionTimestamp"):
        return None
    return {(namespace or "", name): str(status.get("phase") or Phase.Pending.value)}


class ProbePhases(Collector):
    """``mace_probe_phase`` from ``probes``: each probe's key to the phases recorded for it (one)."""

    def __init__(self, probes: Mapping[Key, Collection[str]] | None = None) -> None:
        self.probes: Mapping[Key, Collection[str]] = probes or {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "mace_probe_phase", "1 for the LatencyProbe's phase (status.phase; Pending until the operator "
            "writes one), 0 for the other phases.", labels=["namespace", "probe", "phase"])
        for (namespace, name), phases in sorted(self.probes.items()):
            for phase in Phase:
                family.add_metric([namespace, name, phase.value], int(phase.value in phases))
        yield family


def metrics_registry(phases: ProbePhases) -> CollectorRegistry:
    """The page's collectors: the probes' phases and the process's own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(phases)
    ProcessCollector(registry=registry)
    return registry


def listen(address: str) -> socket.socket:
    """A TCP socket listening on ``HOST:PORT`` (``[::]:PORT`` for IPv6, ``:PORT`` for 0.0.0.0); raises
    ValueError or OSError. Bound before kopf starts, so that a taken port ends the operator at once."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, e.g. 0.0.0.0:9465, got {address!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, int(port)), family=family)


class MetricsServer:
    """Serves ``GET /metrics`` (text or OpenMetrics, as the scraper asks) on an already bound socket."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry) -> None:
        self.sock = sock
        self.registry = registry
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


def register(registry: kopf.OperatorRegistry, phases: ProbePhases, server: MetricsServer) -> None:
    """Index every probe's phase into ``phases`` and serve ``server`` while the operator runs."""

    @kopf.index(GROUP, VERSION, PLURAL, id=INDEX, registry=registry)
    async def probe_phases(*, namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
                           **_: Any) -> dict[Key, str] | None:
        return probe_phase(namespace, name, status, meta)

    @kopf.on.startup(id="serve-metrics", registry=registry)
    async def serve(**kwargs: Any) -> None:
        phases.probes = kwargs[INDEX]
        await server.start()

    @kopf.on.cleanup(id="stop-metrics", registry=registry)
    async def stop(**_: Any) -> None:
        await server.stop()
