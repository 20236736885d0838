"""Property tests: every valid filter survives render -> parse, whatever its spacing."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mace.fields import CATALOGUE, FAMILY, TRANSPORT, End, Field, Header
from mace.grammar import parse, render
from mace.models import IFINDEX_MAX, PID_MAX, FlowSpec, ProtocolFilter
from mace.safety import MAX_CORR_BYTES, MAX_INFO_FIELDS

PROTOCOLS = [(Header.ipv4, Header.icmp), (Header.ipv6, Header.icmp6), (Header.ipv4, Header.udp),
             (Header.ipv6, Header.udp), (Header.ipv4, Header.tcp), (Header.ipv6, Header.tcp),
             (Header.ipv4, None)]


def _fits(field: Field, family: Header, transport: Header | None) -> bool:
    header = CATALOGUE[field].header
    return FAMILY[header] in (None, family) and TRANSPORT[header] in (None, transport)


@st.composite
def flow_specs(draw: st.DrawFn) -> FlowSpec:
    family, transport = draw(st.sampled_from(PROTOCOLS))
    allowed = [f for f in Field if _fits(f, family, transport)]
    correlatable = [f for f in allowed if CATALOGUE[f].ends == {End.process, End.device}]
    anchor = draw(st.sampled_from([f for f in correlatable if CATALOGUE[f].per_packet]))
    extra = draw(st.lists(st.sampled_from(correlatable), unique=True, max_size=4))
    corr: list[Field] = [anchor]
    for f in extra:
        if f not in corr and sum(CATALOGUE[g].width for g in corr) + CATALOGUE[f].width <= MAX_CORR_BYTES:
            corr.append(f)
    info = draw(st.lists(st.sampled_from(allowed), unique=True, max_size=MAX_INFO_FIELDS))
    return FlowSpec(corr=tuple(draw(st.permutations(corr))), info=tuple(info))


filters = st.builds(ProtocolFilter.model_validate, st.fixed_dictionaries({
    "dev-id": st.integers(1, IFINDEX_MAX),
    "proc-id": st.integers(1, PID_MAX),
    "in": flow_specs(),
    "out": flow_specs(),
}))


@settings(max_examples=400)
@given(filters)
def test_render_then_parse_round_trips(f: ProtocolFilter) -> None:
    assert parse(render(f)) == f


@settings(max_examples=200)
@given(filters, st.data())
def test_spacing_does_not_matter(f: ProtocolFilter, data: st.DataObject) -> None:
    """Whitespace around colons is optional, between words any run of blanks works."""
    pieces = re.split(r"(\s+|:)", render(f))
    respaced = []
    for piece in pieces:
        if piece == ":":
            respaced.append(data.draw(st.sampled_from(["", " ", "\t"])) + ":"
                            + data.draw(st.sampled_from(["", " ", "\n"])))
        elif piece.isspace():
            respaced.append(data.draw(st.sampled_from([" ", "  ", "\t", "\n", " \r\n "])))
        else:
            respaced.append(piece)
    assert parse("".join(respaced)) == f


@given(st.text(max_size=300))
def test_arbitrary_text_never_escapes_as_an_unexpected_error(text: str) -> None:
    from mace.grammar import FilterError

    try:
        parse(text)
    except FilterError as error:
        assert error.problems
