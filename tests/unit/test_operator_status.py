"""The operator's status decisions: conditions, what to write, when to resolve again, when to let go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mace_operator.conditions import condition, rfc3339
from mace_operator.decide import (
    Outcome,
    differs,
    may_release,
    needs_resolve,
    not_reporting,
    report_due,
    resolved_filter,
    spec_problems,
    status_patch,
    waiting_for_agent,
)
from mace_operator.pods import PodTarget

from mace.grammar import parse
from mace.probe import (
    MAX_MESSAGE_CHARS,
    OPERATOR_STATUS_KEYS,
    ConditionType,
    LatencyProbeStatus,
    Phase,
    Reason,
)
from mace.resolve import Resolution

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
SPEC = {"pod": "pinger", "in": {"corr": ["icmp_seq", "icmp_id"], "info": ["icmp_seq"]},
        "out": {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]}}
TARGET = PodTarget("node-a", "10.1.0.5", ("containerd://c1",))
RESOLUTION = Resolution.model_validate({"procIds": [41, 57], "procId": 41, "vethIfindex": 9,
                                        "vethName": "veth9",
                                        "outerIfindex": 2, "outerDevice": "eth0"})


def measuring(status: dict[str, Any] | None = None, now: datetime = T0) -> dict[str, Any]:
    spec, _ = spec_problems(SPEC)
    assert spec is not None
    text = resolved_filter(spec, RESOLUTION)
    outcome = Outcome(Phase.Measuring, Reason.Measuring, text, node="node-a", target=TARGET,
                      resolution=RESOLUTION, filter=text)
    return status_patch(outcome, status or {}, 1, now)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = condition(ConditionType.Resolved, False, Reason.PodNotFound, "gone", generation=1, now=T0,
                      previous=[])
    later = T0 + timedelta(minutes=5)
    same = condition(ConditionType.Resolved, False, Reason.PodNotRunning, "pending", generation=2, now=later,
                     previous=[first])
    flipped = condition(ConditionType.Resolved, True, Reason.Resolved, "ok", generation=2, now=later,
                        previous=[same])
    assert first["lastTransitionTime"] == same["lastTransitionTime"] == "2025-03-04T05:06:07Z"
    assert (same["reason"], same["observedGeneration"]) == ("PodNotRunning", 2)
    assert flipped["lastTransitionTime"] == rfc3339(later)


def test_condition_message_is_bounded() -> None:
    built = condition(ConditionType.Measuring, False, Reason.AgentError, "x" * 5000, generation=None, now=T0,
                      previous=None)
    assert len(built["message"]) == MAX_MESSAGE_CHARS
    assert "observedGeneration" not in built


def test_measuring_status_carries_the_seed_filter_and_validates() -> None:
    patch = measuring()
    assert set(patch) == OPERATOR_STATUS_KEYS
    assert patch["filter"] == ("dev-id: 2 proc-id: 41 in: corr: icmp_id icmp_seq info: icmp_seq "
                               "out: corr: icmp_id icmp_seq info: icmp_seq")
    assert parse(patch["filter"]).proc_id == 41
    assert (patch["phase"], patch["node"], patch["procIds"], patch["containerID"]) == (
        "Measuring", "node-a", [41, 57], "containerd://c1")
    assert patch["startedAt"] == "2025-03-04T05:06:07Z"
    assert [(c["type"], c["status"], c["reason"]) for c in patch["conditions"]] == [
        ("Resolved", "True", "Resolved"), ("Measuring", "True", "Measuring")]
    LatencyProbeStatus.model_validate({k: v for k, v in patch.items() if v is not None})


def test_same_outcome_later_changes_nothing() -> None:
    first = measuring()
    again = measuring(first, now=T0 + timedelta(hours=1))
    assert not differs(again, first)
    assert not differs(again, {**first, "results": {"state": "Measuring"}})


def test_problem_clears_the_filter_but_keeps_node_and_started_at() -> None:
    before = measuring()
    patch = status_patch(Outcome(Phase.Failed, Reason.PodNotFound, "pod default/pinger does not exist"),
                         before, 1, T0 + timedelta(seconds=30))
    assert patch["phase"] == "Failed"
    assert patch["filter"] is None and patch["procIds"] is None
    assert patch["node"] == "node-a", "the node whose agent must stop the run"
    assert patch["startedAt"] == before["startedAt"]
    assert {c["reason"] for c in patch["conditions"]} == {"PodNotFound"}
    assert all(c["lastTransitionTime"] == rfc3339(T0 + timedelta(seconds=30)) for c in patch["conditions"])
    assert differs(patch, before)


def test_completed_keeps_the_resolved_filter() -> None:
    before = measuring()
    done = Outcome(Phase.Completed, Reason.Completed, "done")
    patch = status_patch(done, before, 1, T0 + timedelta(minutes=1))
    assert (patch["phase"], patch["filter"], patch["node"]) == ("Completed", before["filter"], "node-a")
    assert [(c["type"], c["status"], c["reason"]) for c in patch["conditions"]] == [
        ("Resolved", "True", "Resolved"), ("Measuring", "False", "Completed")]


@pytest.mark.parametrize(("change", "expected"), [
    ({}, False),
    ({"phase": "Pending"}, True),
    ({"filter": None}, True),
    ({"observedGeneration": 2}, True),
    ({"node": "node-b"}, True),
    ({"podIP": "10.1.0.6"}, True),
    ({"containerIDs": ["containerd://c2"]}, True),
    ({"results": {"state": "Error", "node": "node-a", "message": "process 41 exited"}}, True),
    ({"results": {"state": "Error", "node": "node-old"}}, False),
    ({"results": {"state": "Measuring", "node": "node-a"}}, False),
])
def test_needs_resolve(change: dict[str, Any], expected: bool) -> None:
    assert needs_resolve({**measuring(), **change}, TARGET, 1) is expected


def test_spec_problems_name_the_rule() -> None:
    spec, problems = spec_problems({**SPEC, "in": {"corr": ["ip_proto", "ip_prot0", "icmp_seq"]}})
    assert spec is None and problems == "spec.in.corr: field listed twice: ip_proto"
    spec, problems = spec_problems({**SPEC, "out": {"corr": ["icmp_id"]}})
    assert spec is None and problems.startswith("spec.out: corr [icmp_id] cannot tell packets")


def test_waiting_for_agent() -> None:
    waiting = status_patch(Outcome(Phase.Pending, Reason.NoAgentOnNode, "none", node="node-a"), {}, 1, T0)
    assert waiting_for_agent(waiting)
    assert not waiting_for_agent(measuring())
    pending = Outcome(Phase.Pending, Reason.PodNotRunning, "p", node="n")
    assert not waiting_for_agent(status_patch(pending, {}, 1, T0))


@pytest.mark.parametrize(("state", "present", "elapsed", "expected"), [
    ("Measuring", True, 1, False),
    ("Attaching", True, 9, False),
    ("Measuring", True, 10, True),
    ("Stopped", True, 0, True),
    ("Error", True, 0, True),
    (None, True, 0, True),
    ("Measuring", False, 0, True),
])
def test_may_release(state: str | None, present: bool, elapsed: int, expected: bool) -> None:
    status = {"results": {"state": state}} if state else {}
    now, deadline = T0 + timedelta(seconds=elapsed), T0 + timedelta(seconds=10)
    assert may_release(status, present, now, deadline) is expected


def reported(status: dict[str, Any], at: datetime, heartbeat: int | None = 2) -> dict[str, Any]:
    """``status`` after the agent wrote its results at ``at``."""
    results = {"state": "Measuring", "node": "node-a", "updated": rfc3339(at), "matched": 7}
    if heartbeat is not None:
        results["heartbeatSeconds"] = heartbeat
    return {**status, "results": results}


def test_a_silent_agent_is_overdue_after_three_heartbeats() -> None:
    status = reported(measuring(), T0 + timedelta(seconds=10))
    assert report_due(status) == T0 + timedelta(seconds=16)
    assert not_reporting(status, T0 + timedelta(seconds=15)) is None
    why = not_reporting(status, T0 + timedelta(seconds=16))
    assert why is not None and "node-a" in why and rfc3339(T0 + timedelta(seconds=10)) in why
    assert not_reporting(reported(measuring(), T0, heartbeat=None), T0 + timedelta(seconds=29)) is None
    assert not_reporting(reported(measuring(), T0, heartbeat=None), T0 + timedelta(seconds=30)) is not None


def test_an_agent_that_never_reported_is_overdue_from_when_measuring_began() -> None:
    status = measuring()
    assert report_due(status) == T0 + timedelta(seconds=30)
    assert not_reporting(status, T0 + timedelta(seconds=31)) is not None
    # An old write does not make a probe that just (re)started measuring overdue.
    restarted = reported(measuring(now=T0 + timedelta(minutes=5)), T0)
    assert report_due(restarted) == T0 + timedelta(minutes=5, seconds=6)


def test_not_reporting_leaves_measuring_and_keeps_the_filter() -> None:
    status = reported(measuring(), T0)
    why = not_reporting(status, T0 + timedelta(minutes=1))
    assert why is not None
    patch = status_patch(Outcome(Phase.Pending, Reason.AgentNotReporting, why, node="node-a"), status, 1,
                         T0 + timedelta(minutes=1))
    assert patch["phase"] == "Pending" and patch["filter"] == status["filter"]
    assert [(c["type"], c["status"], c["reason"]) for c in patch["conditions"]] == [
        ("Resolved", "True", "Resolved"), ("Measuring", "False", "AgentNotReporting")]
    assert report_due({**status, **patch}) is None, "a probe not Measuring is not overdue"
    LatencyProbeStatus.model_validate({**status, **patch})
