"""Specialising the eBPF program to a filter, the histogram scheme and event decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mace_agent import codegen, histogram
from mace_agent.config import EngineConfig
from mace_agent.events import EventDecoder

from mace.fields import Field
from mace.grammar import parse

PING = ("dev-id: 3 proc-id: 42 in: corr: icmp_id icmp_seq info: ip_src_addr icmp_seq eth_src_addr "
        "out: corr: icmp_seq icmp_id info: icmp_seq")
OFFSETS = codegen.KernelOffsets({name: 8 * i for i, name in enumerate(codegen._OFFSETS)})


def test_layout_packs_fields_in_canonical_order() -> None:
    out = codegen.layout(parse(PING).outbound)
    assert (out.family, out.transport) == (4, 1)
    assert [(s.field, s.offset, s.width) for s in out.corr] == [(Field.icmp_id, 0, 2), (Field.icmp_seq, 2, 2)]
    inbound = codegen.layout(parse(PING).inbound)
    assert [s.field for s in inbound.info] == [Field.eth_src_addr, Field.ip_src_addr, Field.icmp_seq]
    assert [s.offset for s in inbound.info] == [0, 6, 10]


@pytest.mark.parametrize(("corr", "family", "transport"), [
    ("icmp6_id icmp6_seq", 6, 58), ("udp_payload", 0, 17), ("tcp_seq ip6_src_addr", 6, 6), ("ip_id", 4, 0),
])
def test_layout_requires_the_family_and_transport_the_fields_imply(corr: str, family: int,
                                                                   transport: int) -> None:
    flt = parse(f"dev-id: 1 proc-id: 1 in: corr: {corr} info: out: corr: {corr} info:")
    assert (codegen.layout(flt.inbound).family, codegen.layout(flt.inbound).transport) == (family, transport)


def test_info_buffers_fit_the_larger_direction() -> None:
    assert codegen.info_bytes(parse(PING)) == 16  # 6 + 4 + 2 bytes, rounded up to 8
    bare = parse("dev-id: 1 proc-id: 1 in: corr: icmp_seq info: out: corr: icmp_seq info:")
    assert codegen.info_bytes(bare) == 8


def test_prelude_defines_the_target_and_offsets() -> None:
    text = codegen.prelude(parse(PING), OFFSETS, codegen.Namespaces(agent=111, process=222), EngineConfig())
    assert "#define DEV_IFINDEX 3\n" in text
    assert "#define PROC_TGID 42\n" in text
    assert "#define NETNS_INUM 111U\n" in text
    assert "#define PROC_NETNS_INUM 222U\n" in text
    assert "#define OUT_L4PROTO 1\n" in text
    assert "#define UDP_CLAIM 0\n" in text
    assert f"#define OFF_SKB_DEV {OFFSETS.offsets['skb_dev']}\n" in text
    assert f"#define C_RATE_LIMITED {codegen.COUNTERS.index('rate_limited')}\n" in text


def test_copy_code_reads_each_field_and_applies_masks() -> None:
    flt = parse("dev-id: 1 proc-id: 1 in: corr: icmp6_seq ip6_flow_label info: eth_dst_addr "
                "out: corr: icmp6_seq info:")
    text = codegen.functions(flt)
    assert "bpf_probe_read_kernel(buf + 0, 4, p->l3 + 0)" in text  # flow label first (L3)
    assert "buf[0] &= 0x00;" in text and "buf[1] &= 0x0f;" in text
    assert "bpf_probe_read_kernel(buf + 4, 2, p->l4 + 6)" in text
    assert "if (p->l2 && bpf_probe_read_kernel(buf + 0, 6, p->l2 + 0))" in text


def test_ip_and_transport_fields_come_from_the_header_bytes_read_once() -> None:
    text = codegen.functions(parse("dev-id: 1 proc-id: 1 in: corr: udp_payload info: ip_src_addr "
                                   "out: corr: udp_payload info:"))
    # UDP payload bytes 0-7 behind an IPv4 header without options (20 + 8) or an IPv6 header (40 + 8)
    copy = "\n        __builtin_memcpy"
    assert f"if (p->l4off == 20 && p->hdr_len >= 36){copy}(buf + 0, p->hdr + 28, 8);" in text
    assert f"else if (p->l4off == 40 && p->hdr_len >= 56){copy}(buf + 0, p->hdr + 48, 8);" in text
    assert f"if (p->hdr_len >= 16){copy}(buf + 0, p->hdr + 12, 4);" in text
    # otherwise (IP options) the packet itself is read
    assert "if (!p->l4 || bpf_probe_read_kernel(buf + 0, 8, p->l4 + 8))" in text


def test_receive_calls_are_hooked_only_when_ingress_may_be_udp() -> None:
    """Other packets are taken wherever the thread copies them and reported when the socket layer
    returns, whichever call reads (so read() too); UDP datagrams are noted when a receive call starts."""
    udp = codegen.tracepoints(parse("dev-id: 1 proc-id: 1 in: corr: udp_payload info: "
                                    "out: corr: udp_payload info:"))
    ping = codegen.tracepoints(parse(PING))
    receive_calls = {f"syscalls:sys_{edge}_{call}" for call in ("recvfrom", "recvmsg", "recvmmsg")
                     for edge in ("enter", "exit")}
    assert receive_calls | {"sock:sk_data_ready", "sock:sock_recv_length"} <= set(udp)
    assert not receive_calls & set(ping) and "sock:sk_data_ready" not in ping
    assert "sock:sock_recv_length" in ping and "skb:skb_copy_datagram_iovec" in ping


def test_tcp_sends_by_other_calls_are_hooked_where_the_kernel_can() -> None:
    tcp = parse("dev-id: 1 proc-id: 1 in: corr: tcp_seq info: out: corr: tcp_seq info:")
    old = codegen.KernelHooks(tcp_sendmsg_locked=False)
    assert codegen.tcp_send_hook(tcp, codegen.KernelHooks())
    assert not codegen.tcp_send_hook(tcp, old)
    assert not codegen.tcp_send_hook(parse(PING), codegen.KernelHooks())  # egress is ICMP
    hooks = {"tcp:tcp_sendmsg_locked", "sock:sock_send_length"}
    assert hooks <= set(codegen.tracepoints(tcp))
    assert not hooks & set(codegen.tracepoints(tcp, old))
    netns = codegen.Namespaces(1, 2)
    assert "#define TCP_SEND_HOOK 1\n" in codegen.prelude(tcp, OFFSETS, netns, EngineConfig())
    assert "#define TCP_SEND_HOOK 0\n" in codegen.prelude(tcp, OFFSETS, netns, EngineConfig(), old)


def test_without_sock_recv_length_packets_are_reported_at_the_receive_calls_exit() -> None:
    old = codegen.KernelHooks(sock_recv_length=False)
    names = codegen.tracepoints(parse(PING), old)
    assert "syscalls:sys_exit_recvmsg" in names and "sock:sock_recv_length" not in names
    assert "#define SOCK_RECV_HOOK 0\n" in codegen.prelude(parse(PING), OFFSETS, codegen.Namespaces(1, 2),
                                                            EngineConfig(), old)
    udp = parse("dev-id: 1 proc-id: 1 in: corr: udp_payload info: out: corr: udp_payload info:")
    assert "sock:sock_recv_length" in codegen.tracepoints(udp, old)  # required: such kernels are refused
    assert codegen.KernelHooks.detect(lambda category, event: category == "tcp") == old


def test_program_splices_the_generated_functions() -> None:
    text = codegen.program(parse(PING), OFFSETS, codegen.Namespaces(1, 2), EngineConfig())
    assert text.index("struct pkt {") < text.index("static __always_inline int out_corr(")
    assert "generated field copies" not in text


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_value_falls_inside_its_bucket(value: int) -> None:
    bucket = histogram.index(value)
    low, high = histogram.bounds(bucket)
    assert 0 <= bucket < histogram.BUCKETS
    assert low <= value < high


def test_buckets_are_contiguous_and_narrow() -> None:
    for bucket in range(histogram.BUCKETS - 1):
        low, high = histogram.bounds(bucket)
        assert histogram.bounds(bucket + 1)[0] == high
        assert high - low <= max(1, low // histogram.SUB)


def test_percentiles() -> None:
    assert histogram.exact_percentile([10, 20, 30, 40], 50) == 20
    assert histogram.exact_percentile([10, 20, 30, 40], 99) == 40
    assert histogram.exact_percentile([], 50) == 0
    counts = [0] * histogram.BUCKETS
    counts[histogram.index(50_000)] = 99
    counts[histogram.index(1_000_000)] = 1
    p50 = histogram.histogram_percentile(counts, 50, 1_000_000)
    assert abs(p50 - 50_000) <= 50_000 / histogram.SUB
    assert histogram.histogram_percentile(counts, 100, 1_000_000) == 1_000_000
    assert histogram.histogram_percentile([0] * histogram.BUCKETS, 50, 0) == 0


def test_decoder_turns_event_bytes_into_fields() -> None:
    decoder = EventDecoder(parse(PING))
    info = bytes.fromhex("0a1b2c3d4e5f") + bytes([10, 0, 0, 7]) + struct.pack(">H", 513)
    raw = struct.pack("<QQIIB7x", 5_000, 1_234, 42, 43, 1) + info.ljust(16, b"\0")
    event = decoder.decode(raw)
    assert (event.direction, event.latency_ns, event.timestamp_ns, event.proc_id) == ("in", 1_234, 5_000, 42)
    assert event.info == {"eth_src_addr": "0a:1b:2c:3d:4e:5f", "ip_src_addr": "10.0.0.7", "icmp_seq": 513}
    with pytest.raises(ValueError, match="expected"):
        decoder.decode(raw[:10])


def test_config_problems() -> None:
    assert EngineConfig().problems() == []
    bad = EngineConfig(map_entries=0, rate_limit=-1, ttl_s=0, ringbuf_pages=3)
    assert len(bad.problems()) == 4
    assert EngineConfig(vxlan_ports=()).problems() == []
    assert EngineConfig(vxlan_ports=(0,)).problems() != []
    assert EngineConfig(vxlan_ports=tuple(range(1000, 1009))).problems() != []  # more than 8


def test_vxlan_ports_become_one_c_test() -> None:
    flt, netns = parse(PING), codegen.Namespaces(1, 2)
    text = codegen.prelude(flt, OFFSETS, netns, EngineConfig(vxlan_ports=(8472, 4789, 8472)))
    assert "#define VXLAN 1\n" in text
    assert "#define VXLAN_PORT(port) ((port) == 4789 || (port) == 8472)\n" in text
    text = codegen.prelude(flt, OFFSETS, netns, EngineConfig(vxlan_ports=()))
    assert "#define VXLAN 0\n" in text
    assert "#define VXLAN_PORT(port) (0)\n" in text


def test_tcp_chain_needs_tcp_seq_in_the_ingress_packet_id() -> None:
    tcp = parse("dev-id: 1 proc-id: 1 in: corr: tcp_src_port tcp_seq info: out: corr: tcp_seq info:")
    assert codegen.tcp_seq_offset(tcp) == 2
    assert "#define TCP_SEQ_AT 2\n" in codegen.prelude(tcp, OFFSETS, codegen.Namespaces(1, 2), EngineConfig())
    assert codegen.tcp_seq_offset(parse(PING)) == -1
