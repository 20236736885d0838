"""Which kernel hooks the program uses on the running kernel.

The program is compiled once per agent for the kernel's feature set: the optional tracepoints
it has decide which code paths are compiled in (see agent/bpf/mace.c).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelHooks:
    """Which optional tracepoints the running kernel has (the defaults: a recent kernel's)."""

    sock_recv_length: bool = True
    """Where the socket layer returns to any receive call (Linux 6.3 on). Without it, packets
    are taken only inside recvfrom/recvmsg/recvmmsg, and UDP cannot be measured."""
    tcp_sendmsg_locked: bool = True
    """Where TCP starts queueing a send's data: TCP sent by write() or writev() is
    measured from there."""

    @classmethod
    def detect(cls, exists: Callable[[str, str], bool]) -> KernelHooks:
        """The hooks for which ``exists(category, event)`` says the tracepoint is there."""
        return cls(sock_recv_length=exists("sock", "sock_recv_length"),
                   tcp_sendmsg_locked=exists("tcp", "tcp_sendmsg_locked"))

    @property
    def udp(self) -> bool:
        """Whether UDP's receive side can be measured (it needs sock_recv_length)."""
        return self.sock_recv_length

    def tracepoints(self) -> tuple[str, ...]:
        """The ``category:event`` tracepoints the program attaches to with these hooks."""
        calls = ("sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg", "recvmmsg")
        names = [f"syscalls:sys_{edge}_{call}" for call in calls for edge in ("enter", "exit")]
        names.append("syscalls:sys_enter_bind")
        names += ["net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit", "net:netif_receive_skb",
                  "skb:skb_copy_datagram_iovec"]
        if self.sock_recv_length:
            names += ["sock:sock_recv_length", "sock:sk_data_ready"]
        if self.tcp_sendmsg_locked:
            names += ["tcp:tcp_sendmsg_locked", "sock:sock_send_length"]
        return tuple(names)
