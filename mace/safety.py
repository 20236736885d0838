"""Safety catches: flow specs too general or too costly to run on a busy node are refused.

The seed asks that requests must not slow the host's traffic through "overtly general
correlations". Each rule returns problems that name the field and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from mace.fields import CATALOGUE, FAMILY, TRANSPORT, End, Field, Header

MAX_INFO_FIELDS = 6
"""At most this many ``info`` fields per flow spec (each is copied into every event)."""

MAX_CORR_BYTES = 40
"""The packet id is the ``corr`` values packed side by side into this many bytes at most."""

RULES = (
    ("non-empty", "`corr` lists at least one field: without it every packet would match."),
    ("per-packet", "`corr` holds a field that changes from packet to packet ("
     + ", ".join(f.value for f, i in CATALOGUE.items() if i.per_packet)
     + "): addresses, ports and protocols alone match every packet of a flow."),
    ("compatible", "all fields of a flow spec can occur in one packet: one IP family "
     "(IPv4 or IPv6) and one transport (ICMP, ICMPv6, UDP or TCP)."),
    ("both-ends", "`corr` fields are seen with the same value at the process and at the "
     "outer device (Ethernet addresses are rewritten on the way, so they may only be `info`)."),
    ("corr-size", f"`corr` fields add up to at most {MAX_CORR_BYTES} bytes."),
    ("info-size", f"`info` lists at most {MAX_INFO_FIELDS} fields."),
)
"""The rules, for documentation: (name, what it requires)."""


class UnsafeFlowSpec(ValueError):
    """A flow spec broke one or more safety rules; ``problems`` says which and why."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _conflicts(fields: Sequence[Field], axis: dict[Header, Header | None], what: str) -> list[str]:
    seen: dict[Header, Field] = {}
    for f in fields:
        implied = axis[CATALOGUE[f].header]
        if implied is not None:
            seen.setdefault(implied, f)
    if len(seen) <= 1:
        return []
    names = ", ".join(f"{f.value} ({h.value})" for h, f in seen.items())
    return [f"fields of different {what} cannot occur in one packet: {names}"]


def flow_problems(corr: Sequence[Field], info: Sequence[Field]) -> list[str]:
    """Every safety rule a flow spec (with fields in canonical order) breaks, as messages."""
    problems: list[str] = []
    if not corr:
        problems.append("corr is empty: a flow spec needs at least one correlating field")
    elif not any(CATALOGUE[f].per_packet for f in corr):
        per_packet = ", ".join(f.value for f, i in CATALOGUE.items() if i.per_packet)
        problems.append(
            f"corr [{' '.join(f.value for f in corr)}] cannot tell packets of one flow apart: "
            f"add a per-packet field ({per_packet})")
    for f in corr:
        if End.process not in CATALOGUE[f].ends or End.device not in CATALOGUE[f].ends:
            problems.append(f"corr field {f.value} is not observable with the same value at both "
                            "ends (it is rewritten on the way); use it in info instead")
    width = sum(CATALOGUE[f].width for f in corr)
    if width > MAX_CORR_BYTES:
        problems.append(f"corr fields take {width} bytes, over the limit of {MAX_CORR_BYTES}")
    everything = list(corr) + [f for f in info if f not in corr]
    problems += _conflicts(everything, FAMILY, "IP families")
    problems += _conflicts(everything, TRANSPORT, "transport protocols")
    if len(info) > MAX_INFO_FIELDS:
        problems.append(f"info lists {len(info)} fields, over the limit of {MAX_INFO_FIELDS}")
    return problems
