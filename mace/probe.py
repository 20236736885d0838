"""pydantic models of the LatencyProbe custom resource: its spec and its status.

The CRD's OpenAPI schema is generated from these models (:mod:`mace.crd`). The status has
two writers that never send each other's keys: the operator (everything but ``results``)
and the agent on the probe's node (``results`` only).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mace.grammar import MAX_FILTER_CHARS
from mace.models import PID_MAX, FlowSpec

GROUP = "mace.dev"
VERSION = "v1alpha1"
KIND = "LatencyProbe"
PLURAL = "latencyprobes"
SINGULAR = "latencyprobe"
SHORT_NAMES = ("lp",)
API_VERSION = f"{GROUP}/{VERSION}"

MAX_EVENTS_PER_SECOND = 100_000
"""Upper bound of ``spec.maxEventsPerSecond``: the agent's per-probe event budget."""

MAX_DURATION_SECONDS = 31_536_000
"""Upper bound of ``spec.durationSeconds`` (a year)."""

MAX_PROC_IDS = 4096
"""At most this many PIDs are kept in ``status.procIds``."""

MAX_CONTAINERS = 64
"""At most this many containers are measured in one pod."""

MAX_CONDITIONS = 8
MAX_MESSAGE_CHARS = 1024

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_IFNAME_CHAR = r"[^/:\x00\x09-\x0d\x20]"
_IFNAME_FIRST = r"[^/:\x00\x09-\x0d\x20.]"
IFNAME = rf"^({_IFNAME_FIRST}|\.{_IFNAME_FIRST}|\.\.{_IFNAME_CHAR}){_IFNAME_CHAR}*$"
"""Linux device names as the kernel's ``dev_valid_name`` takes them: no slash, colon, NUL or ASCII
whitespace, and neither ``.`` nor ``..`` (a pattern without look-ahead: Kubernetes checks it with RE2)."""
IFNAME_MAX_BYTES = 15
"""IFNAMSIZ less the terminating NUL: the limit is in bytes (UTF-8), not characters."""


def _device_name_fits(name: str) -> str:
    if len(name.encode()) > IFNAME_MAX_BYTES:
        raise ValueError(f"a device name is at most {IFNAME_MAX_BYTES} bytes (UTF-8), got "
                         f"{len(name.encode())}")
    return name


DeviceName = Annotated[
    str,
    Field(min_length=1, max_length=IFNAME_MAX_BYTES, pattern=IFNAME, json_schema_extra={
        "x-kubernetes-validations": [{"rule": f"size(bytes(self)) <= {IFNAME_MAX_BYTES}",
                                      "message": f"a device name is at most {IFNAME_MAX_BYTES} bytes"}]}),
    AfterValidator(_device_name_fits),
]
"""A device name Linux accepts: 1-15 bytes, not ``.`` or ``..``, no ``/``, ``:`` or whitespace."""


Pid = Annotated[int, Field(ge=1, le=PID_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LatencyProbeSpec(_Model):
    """What to measure: one pod (optionally one container), a flow spec per direction, limits."""

    pod: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                     description="Name of the pod to measure, in the probe's namespace.")
    container: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL,
        description="Container whose processes are measured; all of the pod's containers if unset.")
    inbound: FlowSpec = Field(alias="in", description="Flow spec for ingress (outer device -> process).")
    outbound: FlowSpec = Field(alias="out", description="Flow spec for egress (process -> outer device).")
    duration_seconds: int | None = Field(
        default=None, alias="durationSeconds", ge=1, le=MAX_DURATION_SECONDS,
        description="Stop measuring (phase Completed) this many seconds after measuring started; "
                    "unset: until the probe is deleted.")
    max_events_per_second: int = Field(
        default=1000, alias="maxEventsPerSecond", ge=1, le=MAX_EVENTS_PER_SECOND,
        description="Per-packet events the agent takes from this probe per second; the rest are "
                    "counted in status.results.rateLimited.")
    outer_device: DeviceName | None = Field(
        default=None, alias="outerDevice",
        description="Node device that is the far end of the measured path; the device of the "
                    "node's default route if unset.")


class Phase(StrEnum):
    """Where a probe is in its life, as the operator sees it."""

    Pending = "Pending"
    Measuring = "Measuring"
    Failed = "Failed"
    Completed = "Completed"


class ConditionType(StrEnum):
    """The operator's conditions: the pod was resolved into a filter; that filter is being measured."""

    Resolved = "Resolved"
    Measuring = "Measuring"


class Reason(StrEnum):
    """Why an operator condition has its status."""

    Resolved = "Resolved"
    Measuring = "Measuring"
    Completed = "Completed"
    PodNotFound = "PodNotFound"
    PodNotRunning = "PodNotRunning"
    ContainerNotFound = "ContainerNotFound"
    NoAgentOnNode = "NoAgentOnNode"
    InvalidFilter = "InvalidFilter"
    AgentError = "AgentError"
    AgentNotReporting = "AgentNotReporting"
    AgentAtCapacity = "AgentAtCapacity"
    ResolveFailed = "ResolveFailed"
    NotResolved = "NotResolved"


class Condition(_Model):
    """A standard Kubernetes condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: Reason
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS)
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)


class ResultsState(StrEnum):
    """State of the probe's engine run on its node, as the agent reports it."""

    Attaching = "Attaching"
    Measuring = "Measuring"
    Error = "Error"
    Stopped = "Stopped"


class Scope(StrEnum):
    """What a probe measures: one process and its threads, or every process of some cgroups
    (a pod's containers: their threads and the processes they fork included)."""

    process = "process"
    cgroup = "cgroup"


class DirectionSummary(_Model):
    """Latency summary of one direction since the run started."""

    count: int = Field(ge=0, description="Packets measured.")
    p50_ns: int | None = Field(default=None, alias="p50Ns", ge=0, description="Median latency, ns.")
    p90_ns: int | None = Field(default=None, alias="p90Ns", ge=0, description="90th percentile, ns.")
    p99_ns: int | None = Field(default=None, alias="p99Ns", ge=0, description="99th percentile, ns.")
    max_ns: int | None = Field(default=None, alias="maxNs", ge=0, description="Largest latency seen, ns.")
    p50: str | None = Field(default=None, max_length=32, description="p50 for people, e.g. 59.1us.")


class ProbeResults(_Model):
    """What the agent on the probe's node publishes (at most once a second, when it changed)."""

    state: ResultsState
    message: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS,
                                description="Why the run is in Error or Stopped.")
    node: str | None = Field(default=None, max_length=253, description="Node of the agent that wrote this.")
    updated: datetime | None = Field(default=None, description="When the agent wrote this.")
    since: datetime | None = Field(
        default=None, description="When the counts and percentiles began: the run's start on the agent "
                                  "(a restarted agent or a new filter starts again from zero).")
    heartbeat_seconds: int | None = Field(
        default=None, alias="heartbeatSeconds", ge=1, le=3600,
        description="The agent writes results at least this often, changed or not; the operator "
                    "reports AgentNotReporting after 3 heartbeats without a write.")
    scope: Scope | None = Field(
        default=None, description="cgroup: every process of the measured containers' cgroups; process: "
                                  "only the listed processes and their threads (no cgroup v2 id was usable).")
    targets: int | None = Field(default=None, ge=0, le=MAX_PROC_IDS,
                                description="Cgroups (or processes) the agent measures for this probe.")
    egress: DirectionSummary | None = None
    ingress: DirectionSummary | None = None
    matched: int | None = Field(default=None, ge=0, description="Packets whose two events were correlated.")
    unmatched: int | None = Field(default=None, ge=0, description="Events that found no partner.")
    dropped: int | None = Field(default=None, ge=0, description="Events lost (full maps or buffers).")
    rate_limited: int | None = Field(default=None, alias="rateLimited", ge=0,
                                     description="Events over spec.maxEventsPerSecond, not reported.")


class LatencyProbeStatus(_Model):
    """The whole status: the operator's keys, and the results the agent publishes."""

    phase: Phase | None = None
    node: str | None = Field(default=None, max_length=253, description="Node the pod runs on.")
    filter: str | None = Field(default=None, max_length=MAX_FILTER_CHARS,
                               description="The resolved Protocol Filter, in the seed's text form.")
    proc_ids: list[Pid] | None = Field(default=None, alias="procIds", max_length=MAX_PROC_IDS,
                                       description="PIDs of the measured container(s), root PID namespace.")
    container_id: str | None = Field(default=None, alias="containerID", max_length=256,
                                     description="Container ID whose process is proc-id.")
    container_ids: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, alias="containerIDs", max_length=MAX_CONTAINERS,
        description="IDs of all measured containers; a change means a restart, so a new resolve.")
    pod_ip: str | None = Field(default=None, alias="podIP", max_length=64,
                               description="The pod's IP when it was resolved.")
    started_at: datetime | None = Field(
        default=None, alias="startedAt",
        description="When the probe first reached Measuring (durationSeconds counts from here).")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0,
                                            description="The spec generation this status describes.")
    conditions: list[Condition] | None = Field(default=None, max_length=MAX_CONDITIONS)
    results: ProbeResults | None = None


class LatencyProbe(_Model):
    """A whole LatencyProbe object (metadata kept as a plain mapping)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["mace.dev/v1alpha1"] = Field(default="mace.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LatencyProbe"] = "LatencyProbe"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: LatencyProbeSpec
    status: LatencyProbeStatus | None = None


OPERATOR_STATUS_KEYS = frozenset(
    info.alias or name for name, info in LatencyProbeStatus.model_fields.items() if name != "results")
"""Top-level status keys the operator writes; the agent writes only ``results``."""
