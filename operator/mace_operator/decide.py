"""What the operator's part of a probe's status should be: pure decisions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from mace.grammar import render
from mace.models import ProtocolFilter
from mace.probe import OPERATOR_STATUS_KEYS, ConditionType, LatencyProbeSpec, Phase, Reason, ResultsState
from mace.resolve import Resolution
from mace.safety import UnsafeFlowSpec
from mace_operator.conditions import condition, parse_time, rfc3339
from mace_operator.pods import PodTarget

DEFAULT_HEARTBEAT_SECONDS = 10
"""The agent's heartbeat when its results do not say (two publish intervals of 5 s)."""
MISSED_HEARTBEATS = 3
"""Heartbeats without a write after which a probe's agent counts as not reporting."""


@dataclass(frozen=True)
class Outcome:
    """The result of one reconciliation: a phase and why, plus the resolved filter when measuring."""

    phase: Phase
    reason: Reason
    message: str
    node: str | None = None
    target: PodTarget | None = None
    resolution: Resolution | None = None
    filter: str | None = None


def spec_problems(spec: Mapping[str, Any]) -> tuple[LatencyProbeSpec | None, str]:
    """The validated spec, or None and every problem found (for an InvalidFilter condition)."""
    try:
        return LatencyProbeSpec.model_validate(spec), ""
    except ValidationError as error:
        problems: list[str] = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            cause = (item.get("ctx") or {}).get("error")
            if isinstance(cause, UnsafeFlowSpec):
                problems += [f"spec.{where}: {message}" for message in cause.problems]
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"spec.{where}: {message}" if where else message)
        return None, "; ".join(problems)


def completion_time(spec: LatencyProbeSpec, status: Mapping[str, Any]) -> datetime | None:
    """When the probe's ``durationSeconds`` runs out, if it has one and has started."""
    started = parse_time(status.get("startedAt"))
    if spec.duration_seconds is None or started is None:
        return None
    return started + timedelta(seconds=spec.duration_seconds)


def needs_resolve(status: Mapping[str, Any], target: PodTarget, generation: int | None) -> bool:
    """Whether the filter in ``status`` must be (re)resolved for the pod as it is now."""
    results = status.get("results") or {}
    return (
        status.get("phase") != Phase.Measuring.value
        or not status.get("filter")
        or status.get("observedGeneration") != generation
        or status.get("node") != target.node
        or status.get("podIP") != target.pod_ip
        or tuple(status.get("containerIDs") or ()) != target.container_ids
        or (results.get("state") == ResultsState.Error.value and results.get("node") in (None, target.node))
    )


def report_due(status: Mapping[str, Any]) -> datetime | None:
    """When a Measuring probe's agent is overdue: ``MISSED_HEARTBEATS`` heartbeats after its last write
    (or after measuring began, if later); None if the probe is not Measuring."""
    measuring = next((c for c in status.get("conditions") or ()
                      if c.get("type") == ConditionType.Measuring.value and c.get("status") == "True"), None)
    if status.get("phase") != Phase.Measuring.value or measuring is None:
        return None
    results = status.get("results") or {}
    heartbeat = results.get("heartbeatSeconds")
    if not isinstance(heartbeat, int) or heartbeat <= 0:
        heartbeat = DEFAULT_HEARTBEAT_SECONDS
    moments = [moment for moment in (parse_time(results.get("updated")),
                                     parse_time(measuring.get("lastTransitionTime"))) if moment is not None]
    if not moments:
        return None
    return max(moments) + timedelta(seconds=MISSED_HEARTBEATS * heartbeat)


def not_reporting(status: Mapping[str, Any], now: datetime) -> str | None:
    """Why a Measuring probe's figures are stale (its agent is overdue), or None if they are live."""
    due = report_due(status)
    if due is None or now < due:
        return None
    results = status.get("results") or {}
    last = results.get("updated")
    return (f"the agent on node {status.get('node')} has not reported "
            f"{f'since {last}' if last else 'since measuring began'} "
            f"(it writes every {results.get('heartbeatSeconds') or DEFAULT_HEARTBEAT_SECONDS} s at least): "
            "the results are stale")


def resolved_filter(spec: LatencyProbeSpec, resolution: Resolution) -> str:
    """The seed's text form of the filter for a resolved pod."""
    return render(ProtocolFilter(dev_id=resolution.outer_ifindex, proc_id=resolution.proc_id,
                                 inbound=spec.inbound, outbound=spec.outbound))


def status_patch(outcome: Outcome, current: Mapping[str, Any], generation: int | None,
                 now: datetime) -> dict[str, Any]:
    """Every operator-owned status key for ``outcome`` (None: remove the key)."""
    previous = current.get("conditions") or []

    def cond(kind: ConditionType, ok: bool, reason: Reason, message: str) -> dict[str, Any]:
        return condition(kind, ok, reason, message, generation=generation, now=now, previous=previous)

    patch: dict[str, Any] = dict.fromkeys(OPERATOR_STATUS_KEYS)
    patch.update(phase=outcome.phase.value, observedGeneration=generation,
                 startedAt=current.get("startedAt"))
    if outcome.phase is Phase.Measuring and outcome.target and outcome.resolution and outcome.filter:
        target, resolution = outcome.target, outcome.resolution
        patch.update(
            node=target.node, podIP=target.pod_ip, filter=outcome.filter,
            procIds=list(resolution.proc_ids), containerID=target.container_ids[0],
            containerIDs=list(target.container_ids), startedAt=current.get("startedAt") or rfc3339(now),
            conditions=[
                cond(ConditionType.Resolved, True, Reason.Resolved,
                     f"pid {resolution.proc_id} on node {target.node}: pod veth {resolution.veth_name} "
                     f"(ifindex {resolution.veth_ifindex}), outer device {resolution.outer_device} "
                     f"(ifindex {resolution.outer_ifindex})"),
                cond(ConditionType.Measuring, True, Reason.Measuring,
                     f"the agent on {target.node} runs the filter"),
            ])
    elif outcome.phase is Phase.Completed or outcome.reason is Reason.AgentNotReporting:
        for key in ("node", "podIP", "filter", "procIds", "containerID", "containerIDs"):
            patch[key] = current.get(key)
        resolved = [c for c in previous if c.get("type") == ConditionType.Resolved.value]
        done = cond(ConditionType.Measuring, False, outcome.reason, outcome.message)
        patch["conditions"] = [*resolved, done]
    else:
        # A pod that is gone has no node: keep the last one, whose agent still has to stop the run.
        patch["node"] = outcome.node or current.get("node")
        patch["conditions"] = [cond(ConditionType.Resolved, False, outcome.reason, outcome.message),
                               cond(ConditionType.Measuring, False, outcome.reason, outcome.message)]
    return patch


def differs(patch: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether applying ``patch`` would change ``current`` (a missing key equals None)."""
    return any(current.get(key) != value for key, value in patch.items())


def waiting_for_agent(status: Mapping[str, Any]) -> bool:
    """Whether the probe waits for an agent on ``status.node`` to appear or answer."""
    if status.get("phase") != Phase.Pending.value or not status.get("node"):
        return False
    return any(c.get("type") == ConditionType.Resolved.value
               and c.get("reason") in (Reason.NoAgentOnNode.value, Reason.AgentError.value)
               for c in status.get("conditions") or ())


def may_release(status: Mapping[str, Any], agent_present: bool, now: datetime, deadline: datetime) -> bool:
    """Whether a deleted probe's finalizer may go: its run stopped, nobody runs it, or the wait is over."""
    state = (status.get("results") or {}).get("state")
    if state in (None, ResultsState.Stopped.value, ResultsState.Error.value):
        return True
    return not agent_present or now >= deadline
