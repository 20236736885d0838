"""What /proc says about a process's sockets (to check which kind of socket a tool really opened)."""

from __future__ import annotations

import os

TABLES = ("raw", "raw6", "icmp", "icmp6", "udp", "udp6", "tcp", "tcp6")
"""The /proc/PID/net tables searched; "icmp"/"icmp6" list ICMP datagram ("ping") sockets."""


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def sockets(pid: int) -> list[tuple[str, int]]:
    """(table, local port) of each IP socket process ``pid`` holds, as seen in its network namespace.

    For an ICMP datagram socket the local port is its echo identifier.
    """
    inodes = _socket_inodes(pid)
    found: list[tuple[str, int]] = []
    for table in TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}") as rows:
                next(rows, None)
                for row in rows:
                    cols = row.split()
                    if len(cols) > 9 and cols[9] in inodes:
                        found.append((table, int(cols[1].rsplit(":", 1)[1], 16)))
        except FileNotFoundError:
            continue
    return found
