"""pydantic models of the Protocol Filter: the single source of truth for its structure.

A model instance is always structurally valid and passes the safety catches of
:mod:`mace.safety`; the CRD schema is generated from these models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from mace import fields, safety

PID_MAX = 4_194_304
"""The largest PID Linux can hand out (PID_MAX_LIMIT on 64-bit)."""

IFINDEX_MAX = 2**31 - 1


def _resolve_alias(value: object) -> object:
    if isinstance(value, str) and value in fields.ALIASES:
        return fields.ALIASES[value]
    return value


FieldName = Annotated[fields.Field, BeforeValidator(_resolve_alias)]


class FlowSpec(BaseModel):
    """Which fields correlate a packet's two events (``corr``) and which are reported (``info``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    corr: tuple[FieldName, ...] = Field(
        description="Fields whose values identify one packet at both of its events.",
        json_schema_extra={"minItems": 1},
    )
    info: tuple[FieldName, ...] = Field(
        default=(),
        description="Fields reported with each latency (read at the device event).",
        json_schema_extra={"maxItems": safety.MAX_INFO_FIELDS},
    )

    @field_validator("corr", "info")
    @classmethod
    def _canonical_order(cls, value: tuple[fields.Field, ...]) -> tuple[fields.Field, ...]:
        duplicates = sorted({f.value for f in value if value.count(f) > 1})
        if duplicates:
            raise ValueError(f"field listed twice: {', '.join(duplicates)}")
        return tuple(sorted(value, key=fields.ORDER.__getitem__))

    @model_validator(mode="after")
    def _safety_catches(self) -> FlowSpec:
        problems = safety.flow_problems(self.corr, self.info)
        if problems:
            raise safety.UnsafeFlowSpec(problems)
        return self


class ProtocolFilter(BaseModel):
    """The seed's resolved filter: outer device, process, and a flow spec per direction."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    dev_id: int = Field(alias="dev-id", ge=1, le=IFINDEX_MAX,
                        description="ifindex of the outer device in the agent's network namespace.")
    proc_id: int = Field(alias="proc-id", ge=1, le=PID_MAX,
                         description="PID of the measured process in the root PID namespace.")
    inbound: FlowSpec = Field(alias="in", description="Flow spec for ingress (device -> process).")
    outbound: FlowSpec = Field(alias="out", description="Flow spec for egress (process -> device).")
