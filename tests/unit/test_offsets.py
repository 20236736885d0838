"""The sk_buff span: the one kernel read per parse covers the members every parse needs, and takes
``skb_iif`` along (so net_dev_queue needs no read of its own) only where the span stays short enough;
elsewhere the program reads it on its own (``SKB_SPAN_IIF`` 0)."""

from __future__ import annotations

import pytest
from mace_agent.btf import BTFError
from mace_agent.offsets import MEMBERS, SKB_SPAN_MAX, KernelOffsets

# sk_buff offsets of a 6.x kernel (this machine's): iif 32 bytes before the parsed members
NEAR = {"skb_iif": 144, "skb_protocol": 176, "skb_network_header": 180, "skb_mac_header": 182,
        "skb_head": 192, "skb_data": 200}


def _offsets(**skb: int) -> KernelOffsets:
    return KernelOffsets({name: 0 for name in MEMBERS} | NEAR | skb)


def test_the_span_takes_skb_iif_when_it_is_close() -> None:
    offsets = _offsets()
    assert offsets.skb_span() == (144, 64, True)
    defines = offsets.defines()
    assert (defines["SKB_SPAN_START"], defines["SKB_SPAN_LEN"], defines["SKB_SPAN_IIF"]) == (144, 64, 1)


def test_a_distant_skb_iif_is_left_to_a_read_of_its_own() -> None:
    offsets = _offsets(skb_iif=16)
    assert offsets.skb_span() == (176, 32, False)
    assert offsets.defines()["SKB_SPAN_IIF"] == 0


def test_members_too_far_apart_are_refused() -> None:
    with pytest.raises(BTFError, match="span"):
        _offsets(skb_data=176 + SKB_SPAN_MAX).skb_span()
