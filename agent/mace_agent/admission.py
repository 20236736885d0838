"""Which packets an outer device's receive keeps for the targets: user space's half.

The program inserts an ingress packet into the pending table only if a target may read it (mace.c,
``rx_admitted``): a TCP or UDP packet must be addressed to a port one of the targets' sockets has
(``rx_ports``), or to an address of the agent's own network namespace (``node_addresses``: NAT may
turn it into a pod's address and port). The program learns the ports a target binds, sends from and
reads from; this module adds the ports of the sockets a target has when its probe starts, and keeps
the node's addresses current.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mace_agent import layout
from mace_agent.cgroups import PROC

_SOCKET_TABLES = (("tcp", 6), ("tcp6", 6), ("udp", 17), ("udp6", 17))
_FAMILIES: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 6}


def _socket_inodes(pid: int) -> set[int]:
    """Inode numbers of the sockets among a process's file descriptors."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"{PROC}/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"{PROC}/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def socket_ports(pids: Iterable[int]) -> set[tuple[int, int]]:
    """(protocol, local port) of every TCP and UDP socket the processes hold (6: TCP, 17: UDP)."""
    ports: set[tuple[int, int]] = set()
    for pid in pids:
        inodes = _socket_inodes(pid)
        if not inodes:
            continue
        for table, proto in _SOCKET_TABLES:  # the tables of the process's network namespace
            try:
                lines = Path(f"{PROC}/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and int(fields[9]) in inodes:
                    ports.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return ports


_RTM_GETADDR, _NLM_F_REQUEST, _NLM_F_DUMP, _NLMSG_DONE, _NLMSG_ERROR = 22, 1, 0x300, 3, 2
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def namespace_addresses() -> set[tuple[int, bytes]]:
    """(family 4 or 6, address) of every address of this process's network namespace (an rtnetlink
    dump: a netlink library would add megabytes to the agent for one request)."""
    found: set[tuple[int, bytes]] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        request = _NLMSG.pack(_NLMSG.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        nl.send(request + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            data = nl.recv(65536)
            at = 0
            while at + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, at)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError("rtnetlink refused the address dump")
                family = data[at + _NLMSG.size]
                attrs = _attributes(data, at + _NLMSG.size + _IFADDRMSG.size, at + length)
                address = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
                if family in _FAMILIES and address:
                    found.add((_FAMILIES[family], address))
                at += (length + 3) & ~3
            if not data:
                return found


def _attributes(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    """The rtnetlink attributes between ``pos`` and ``end`` of a message: type -> payload."""
    attrs: dict[int, bytes] = {}
    while pos + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, pos)
        attrs[kind] = data[pos + _RTATTR.size:pos + size]
        pos += (size + 3) & ~3
    return attrs


class Admission:
    """The program's admission maps (``rx_ports``, ``node_addresses`` and ``node_address_bits``)."""

    def __init__(self, bpf: Any) -> None:
        self._ports = bpf[b"rx_ports"]
        self._addresses = bpf[b"node_addresses"]
        self._address_bits = bpf[b"node_address_bits"]
        self._written: set[tuple[int, bytes]] = set()

    def admit(self, ports: Iterable[tuple[int, int]]) -> None:
        """Set the bits of (protocol, port) pairs (the program may set others at the same time: a
        bit it sets between this read and write is set again at the target's next call)."""
        for word, bits in layout.bit_words(layout.port_bit(proto, port) for proto, port in ports).items():
            key = ctypes.c_uint32(word)
            value = self._ports[key].value
            if value & bits != bits:
                self._ports[key] = ctypes.c_uint64(value | bits)

    def clear_ports(self) -> None:
        """Clear every port bit (no target is left)."""
        write_words(self._ports, {})

    def refresh_addresses(self) -> None:
        """Write the namespace's current addresses (the most ``layout.NODE_ADDRESSES``; the last ones
        written stay if the kernel does not answer)."""
        try:
            current = set(sorted(namespace_addresses())[:layout.NODE_ADDRESSES])
        except OSError:
            return
        if current == self._written:
            return
        for family, addr in current - self._written:
            self._addresses[_key(family, addr)] = ctypes.c_uint8(1)
        write_words(self._address_bits, _bit_words(current | self._written))  # bits outlive addresses
        for family, addr in self._written - current:
            self._addresses.pop(_key(family, addr), None)
        write_words(self._address_bits, _bit_words(current))
        self._written = current


def _bit_words(addresses: set[tuple[int, bytes]]) -> dict[int, int]:
    """The words of ``node_address_bits`` with the bits of these addresses set."""
    return layout.bit_words(layout.node_address_bit(family, addr) for family, addr in addresses)


def write_words(table: Any, words: dict[int, int]) -> None:
    """Make a bit array map hold exactly these words, the others zero (``rx_ports``,
    ``node_address_bits``, ``udp_sock_bits``); only words that change are written."""
    for index, value in table.items():
        wanted = words.get(index.value, 0)
        if value.value != wanted:
            table[index] = ctypes.c_uint64(wanted)


def _key(family: int, addr: bytes) -> layout.NodeAddressC:
    key = layout.NodeAddressC(family=family)
    ctypes.memmove(key.addr, addr, len(addr))
    return key
