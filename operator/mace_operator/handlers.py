"""kopf handlers: every watch event that can change a probe's outcome asks the reconciler for a pass.

No timers poll anything: probes, pods and agent pods are watched; the only scheduled wake-ups
are retries after an agent error and the end of a probe's ``durationSeconds``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import kopf

from mace.probe import GROUP, PLURAL, VERSION, Phase, ResultsState
from mace_operator.agents import AGENT_LABELS, AgentEndpoint, agent_endpoint, is_agent
from mace_operator.conditions import parse_time
from mace_operator.decide import waiting_for_agent
from mace_operator.reconcile import Reconciler, utcnow

FINALIZER = f"{GROUP}/stop-measurement"
DELETE_GRACE = timedelta(seconds=10)
"""How long a deleted probe waits for its agent to report the run stopped."""
ANNOTATIONS_CROWDED = (256 << 10) - (16 << 10)
"""Annotation bytes beyond which kopf's own may no longer fit (the API server allows 256 KiB in all)."""


def settings(settings: kopf.OperatorSettings) -> kopf.OperatorSettings:
    """Operator settings: state kept in ``mace.dev/`` annotations (the status schema is strict).

    The diff base holds the spec alone (kopf's default copies the labels and annotations too, so a
    probe with a large annotation grew past the API server's object size limit and every patch, the
    finalizer's removal included, failed): the only change handler watches ``spec``.
    """
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-spec", ignored_fields=["metadata"])
    settings.posting.level = logging.WARNING
    return settings


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register the operator's handlers in ``registry``, all feeding ``reconciler``."""
    probes = (GROUP, VERSION, PLURAL)
    pods = ("", "v1", "pods")

    @kopf.index(*pods, id="agents", labels=AGENT_LABELS, registry=registry)
    async def agents(*, body: kopf.Body, **_: Any) -> dict[str, AgentEndpoint] | None:
        endpoint = agent_endpoint(body)
        return {endpoint.node: endpoint} if endpoint is not None else None

    @kopf.index(*probes, id="probes_by_pod", registry=registry)
    async def probes_by_pod(*, namespace: str | None, name: str, spec: kopf.Spec,
                            **_: Any) -> dict[tuple[str | None, str], str]:
        return {(namespace, str(spec.get("pod", ""))): name}

    @kopf.index(*probes, id="probes_waiting_for_agent", registry=registry)
    async def probes_waiting_for_agent(*, namespace: str | None, name: str, status: kopf.Status,
                                       **_: Any) -> dict[str, tuple[str | None, str]] | None:
        return {str(status["node"]): (namespace, name)} if waiting_for_agent(status) else None

    @kopf.on.startup(id="attach-agent-index", registry=registry)
    async def attach(**kwargs: Any) -> None:
        agents: kopf.Index[str, AgentEndpoint] = kwargs["agents"]

        def find(node: str) -> AgentEndpoint | None:
            found = agents.get(node)
            return min(found) if found else None

        reconciler.find_agent = find

    @kopf.on.cleanup(id="drain", registry=registry)
    async def drain(**_: Any) -> None:
        await reconciler.drain()
        await reconciler.agents.close()

    @kopf.on.resume(*probes, id="probe-resume", registry=registry)
    @kopf.on.create(*probes, id="probe-create", registry=registry)
    @kopf.on.update(*probes, id="probe-update", field="spec", registry=registry)
    async def probe_changed(*, namespace: str | None, name: str, **_: Any) -> None:
        reconciler.request(namespace or "", name)

    @kopf.on.event(*probes, id="probe-event", registry=registry)
    async def probe_event(*, namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
                          **_: Any) -> None:
        if meta.get("deletionTimestamp"):
            return
        results = status.get("results") or {}
        reconciler.expect_report(namespace or "", name, dict(status))
        if status.get("phase") == Phase.Measuring.value and results.get("state") == ResultsState.Error.value:
            reconciler.request(namespace or "", name)

    @kopf.on.event(*pods, id="pod-event", registry=registry)
    async def pod_event(*, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        probes_by_pod: kopf.Index[tuple[str | None, str], str] = kwargs["probes_by_pod"]
        waiting: kopf.Index[str, tuple[str | None, str]] = kwargs["probes_waiting_for_agent"]
        for probe in probes_by_pod.get((namespace, name), ()):
            reconciler.request(namespace or "", probe)
        if is_agent(body):
            endpoint = agent_endpoint(body)
            if endpoint is not None:
                for probe_namespace, probe in waiting.get(endpoint.node, ()):
                    reconciler.request(probe_namespace or "", probe)

    @kopf.on.delete(*probes, id="stop-measurement", registry=registry)
    async def stop_measurement(*, namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
                               **kwargs: Any) -> None:
        agents: kopf.Index[str, AgentEndpoint] = kwargs["agents"]
        deleted_at = parse_time(meta.get("deletionTimestamp")) or utcnow()
        await reconciler.wait_until_stopped(namespace or "", name, dict(status), deleted_at + DELETE_GRACE,
                                            lambda node: bool(agents.get(node)))
        # kopf removes the finalizer in a patch that also writes its annotations, which the API server
        # refuses for a probe whose annotations are near their size limit: release it here, alone.
        annotations = meta.get("annotations") or {}
        if sum(len(key) + len(str(value)) for key, value in annotations.items()) > ANNOTATIONS_CROWDED:
            await reconciler.api.remove_finalizer(namespace or "", name, list(meta.get("finalizers") or ()),
                                                  FINALIZER)
