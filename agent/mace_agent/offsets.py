"""Byte offsets of the kernel struct members the program reads, from the running kernel's BTF.

Kernel headers on a node rarely match its kernel, so no struct layout comes from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mace_agent.btf import BTF, BTFError

MEMBERS: dict[str, tuple[str, str, int]] = {
    "skb_head": ("sk_buff", "head", 8),
    "skb_data": ("sk_buff", "data", 8),
    "skb_network_header": ("sk_buff", "network_header", 2),
    "skb_mac_header": ("sk_buff", "mac_header", 2),
    "skb_protocol": ("sk_buff", "protocol", 2),
    "skb_dev": ("sk_buff", "dev", 8),
    "skb_iif": ("sk_buff", "skb_iif", 4),
    "skb_len": ("sk_buff", "len", 4),
    "dev_ifindex": ("net_device", "ifindex", 4),
    "dev_net": ("net_device", "nd_net.net", 8),
    "net_inum": ("net", "ns.inum", 4),
    "task_files": ("task_struct", "files", 8),
    "files_fdt": ("files_struct", "fdt", 8),
    "fdtable_max_fds": ("fdtable", "max_fds", 4),
    "fdtable_fd": ("fdtable", "fd", 8),
    "file_private_data": ("file", "private_data", 8),
    "socket_sk": ("socket", "sk", 8),
    "sock_protocol": ("sock", "sk_protocol", 2),
    "sock_num": ("sock", "__sk_common.skc_num", 2),
    "sock_receive_queue_next": ("sock", "sk_receive_queue.next", 8),
    "sock_receive_queue_prev": ("sock", "sk_receive_queue.prev", 8),
    "sock_receive_queue_qlen": ("sock", "sk_receive_queue.qlen", 4),
    "udp_reader_queue_next": ("udp_sock", "reader_queue.next", 8),
    "udp_reader_queue_qlen": ("udp_sock", "reader_queue.qlen", 4),
}
"""Every kernel struct member the program reads: name -> (struct, member path, size)."""

_SKB_SPAN = ("skb_head", "skb_data", "skb_network_header", "skb_mac_header", "skb_protocol")
"""The sk_buff members every parse reads, in one kernel read (which also takes ``skb_iif`` when it is
close enough: net_dev_queue then needs no read of its own for it)."""
SKB_SPAN_MAX = 128
"""The longest sk_buff span read at once, in bytes."""


@dataclass(frozen=True)
class KernelOffsets:
    """Byte offsets of the kernel struct members the program reads (from BTF), by MEMBERS name."""

    offsets: dict[str, int]

    @classmethod
    def from_btf(cls, btf: BTF) -> KernelOffsets:
        """Resolve every offset, checking the member sizes the program assumes."""
        found = {}
        for name, (struct, path, size) in MEMBERS.items():
            member = btf.member(struct, path)
            if member.size != size:
                raise BTFError(f"{struct}.{path} is {member.size} bytes, expected {size}")
            found[name] = member.offset
        return cls(found)

    def defines(self) -> dict[str, int]:
        """The ``OFF_*`` macros, and the sk_buff span read once per packet (``SKB_SPAN_IIF``: 1 when it
        covers ``skb_iif``)."""
        start, length, iif = self.skb_span()
        return {f"OFF_{name.upper()}": offset for name, offset in self.offsets.items()} | {
            "SKB_SPAN_START": start, "SKB_SPAN_LEN": length, "SKB_SPAN_IIF": int(iif)}

    def skb_span(self) -> tuple[int, int, bool]:
        """(start, length, whether it covers ``skb_iif``) of the one read covering the sk_buff members
        parsed per packet: ``skb_iif`` is covered if the span stays within SKB_SPAN_MAX bytes."""
        start, length = self._span(_SKB_SPAN)
        if length > SKB_SPAN_MAX:
            raise BTFError(f"sk_buff header members span {length} bytes; at most {SKB_SPAN_MAX} supported")
        wider = self._span((*_SKB_SPAN, "skb_iif"))
        return (*wider, True) if wider[1] <= SKB_SPAN_MAX else (start, length, False)

    def _span(self, names: tuple[str, ...]) -> tuple[int, int]:
        members = [(self.offsets[name], MEMBERS[name][2]) for name in names]
        start = min(offset for offset, _ in members) // 8 * 8
        end = max(offset + size for offset, size in members)
        return start, (end - start + 7) // 8 * 8
