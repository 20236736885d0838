"""The ``POST /resolve`` wire between the operator and a node's agent, as pydantic models used by both.

The operator sends a :class:`ResolveRequest`; the agent answers a :class:`Resolution` (200) or a
:class:`ResolveFailure` (4xx/5xx, ``reason`` one of the contract's words such as ``ContainerNotFound``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mace.models import IFINDEX_MAX, PID_MAX
from mace.probe import MAX_CONTAINERS, MAX_MESSAGE_CHARS, MAX_PROC_IDS, DeviceName


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")


class ResolveRequest(_Wire):
    """What the operator asks: the pod's containers, its IP, and the outer device it wants (if any)."""

    container_ids: tuple[str, ...] = Field(alias="containerIDs", min_length=1, max_length=MAX_CONTAINERS)
    pod_ip: str = Field(alias="podIP", max_length=64)
    outer_device: DeviceName | None = Field(default=None, alias="outerDevice")
    probe: str | None = Field(default=None, max_length=317,
                              description="The probe asking (namespace/name): the agent answers 409 "
                                          "AgentAtCapacity when it has no room for another probe.")


class Resolution(_Wire):
    """The agent's answer: what only the node knows about the pod."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    proc_ids: tuple[int, ...] = Field(alias="procIds", min_length=1, max_length=MAX_PROC_IDS)
    proc_id: int = Field(alias="procId", ge=1, le=PID_MAX)
    veth_ifindex: int = Field(alias="vethIfindex", ge=1, le=IFINDEX_MAX)
    veth_name: str = Field(alias="vethName", max_length=15)
    outer_ifindex: int = Field(alias="outerIfindex", ge=1, le=IFINDEX_MAX)
    outer_device: str = Field(alias="outerDevice", max_length=15)


class ResolveFailure(_Wire):
    """Why the agent could not resolve (also every other error body of the agent's endpoint)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    reason: str = Field(max_length=64)
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS)
