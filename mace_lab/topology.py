"""A Kubernetes-like node topology built entirely in network namespaces the caller owns.

Layout (``P`` is the prefix, unique per topology)::

    P-pod0 [eth0 10.213.200.10, fd00:213:c8::10]          P-remote0 [eth0 10.213.0.2, fd00:213:0::2]
        |  veth                                                  |  veth
    P-node [vpod0]--br0 (10.213.200.1, fd00:213:c8::1)   [uplink0 10.213.0.1, fd00:213:0::1]
                                 (forwarding on, v4 and v6)

Every pod reaches every remote through the node's ``uplink<i>`` (the "outer device"); remotes route the
pod subnet back. With ``vxlan_port`` the pods reach each remote over a VXLAN overlay instead, as on a
cluster whose CNI tunnels pod traffic: the node's ``vxlan<i>`` (10.214.<i>.1, fd00:214:<i>::1) and the
remote's ``vxlan0`` (10.214.<i>.2, fd00:214:<i>::2) encapsulate it in UDP to that port between the
uplink addresses, so the outer device carries only encapsulated pod packets; pods get an MTU of 1450.
Devices are created directly inside their namespaces, and only the namespaces made here are touched:
the root namespace's addresses and routes are never changed. ``close()`` (or leaving the ``with``
block) kills the processes started through :meth:`Topology.popen` and deletes every namespace, also
after a failure half-way through building.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

POD_NET4 = "10.213.200"
POD_NET6 = "fd00:213:c8"
BRIDGE = "br0"
_NAME = re.compile(r"^mace-[a-z0-9-]{1,40}$")
_COUNTER = itertools.count()
_GATE = 'read -r _ || true; exec "$@"'


class TopologyError(RuntimeError):
    """A command that builds or changes the topology failed; the message holds its stderr."""


@dataclass(frozen=True)
class Pod:
    """A pod namespace behind the node's bridge."""

    ns: str
    ipv4: str
    ipv6: str
    host_veth: str
    """Name of the pod's veth peer in the node namespace (a bridge port)."""


@dataclass(frozen=True)
class Remote:
    """A remote namespace at the far end of one of the node's uplinks."""

    ns: str
    ipv4: str
    ipv6: str
    uplink: str
    """The outer device's name in the node namespace."""
    uplink_ifindex: int
    """The outer device's ifindex in the node namespace (the filter's dev-id)."""
    node_ipv4: str
    node_ipv6: str
    """The node's addresses facing this remote (its overlay addresses with ``vxlan_port``)."""


@dataclass(frozen=True)
class Tbf:
    """A token-bucket rate limit for an uplink's root qdisc."""

    rate_bps: int
    """Rate in bits per second."""
    burst_bytes: int
    limit_bytes: int


def _run(argv: Sequence[str], timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TopologyError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _canonical6(address: str) -> str:
    return str(ipaddress.IPv6Address(address))


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """End one process this program started, by its PID: SIGTERM, then SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Topology:
    """Node, pod and remote namespaces wired as a node with pods and uplinks; a context manager.

    ``pods`` pod namespaces share the node's bridge; ``remotes`` remote namespaces each hang off their
    own uplink (``uplink0``, ``uplink1``, ...). ``tbf`` puts a TBF root qdisc on ``uplink0``.
    ``verify`` pings every remote from every pod (v4 and v6) before returning, so neighbour
    entries are resolved and the path is known to work. ``vxlan_port`` puts the remotes behind a
    VXLAN overlay on that UDP port (see the module's description).
    """

    def __init__(self, pods: int = 1, remotes: int = 1, prefix: str | None = None,
                 tbf: Tbf | None = None, verify: bool = True, vxlan_port: int | None = None) -> None:
        if not 1 <= pods <= 50 or not 1 <= remotes <= 50:
            raise ValueError("pods and remotes must be between 1 and 50")
        self.prefix = prefix if prefix is not None else f"mace-t{os.getpid()}-{next(_COUNTER)}"
        if not _NAME.match(self.prefix):
            raise ValueError(f"namespace prefix {self.prefix!r} must match {_NAME.pattern}")
        self.node = f"{self.prefix}-node"
        self.pods: list[Pod] = []
        self.remotes: list[Remote] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        self.vxlan_port = vxlan_port
        try:
            self._build(pods, remotes, tbf)
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    # -- building ---------------------------------------------------------------------------------

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        self.sysctl(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})

    def _build(self, pods: int, remotes: int, tbf: Tbf | None) -> None:
        node = self.node
        self._add_namespace(node)
        self.sysctl(node, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        _run(["ip", "-n", node, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0"])
        _run(["ip", "-n", node, "addr", "add", f"{POD_NET4}.1/24", "dev", BRIDGE])
        _run(["ip", "-n", node, "addr", "add", f"{POD_NET6}::1/64", "dev", BRIDGE, "nodad"])
        _run(["ip", "-n", node, "link", "set", BRIDGE, "up"])
        for i in range(pods):
            self.pods.append(self._add_pod(i))
        for i in range(remotes):
            self.remotes.append(self._add_remote(i))
        if tbf is not None:
            self.set_tbf(self.remotes[0].uplink, tbf)

    def _add_pod(self, i: int) -> Pod:
        pod = Pod(ns=f"{self.prefix}-pod{i}", ipv4=f"{POD_NET4}.{10 + i}",
                  ipv6=_canonical6(f"{POD_NET6}::{10 + i:x}"),
                  host_veth=f"vpod{i}")
        self._add_namespace(pod.ns)
        _run(["ip", "-n", self.node, "link", "add", pod.host_veth, "type", "veth",
              "peer", "name", "eth0", "netns", pod.ns])
        _run(["ip", "-n", self.node, "link", "set", pod.host_veth, "master", BRIDGE, "up"])
        _run(["ip", "-n", pod.ns, "addr", "add", f"{pod.ipv4}/24", "dev", "eth0"])
        _run(["ip", "-n", pod.ns, "addr", "add", f"{pod.ipv6}/64", "dev", "eth0", "nodad"])
        if self.vxlan_port is not None:
            _run(["ip", "-n", pod.ns, "link", "set", "eth0", "mtu", "1450"])
        _run(["ip", "-n", pod.ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", pod.ns, "route", "add", "default", "via", f"{POD_NET4}.1"])
        _run(["ip", "-n", pod.ns, "-6", "route", "add", "default", "via", f"{POD_NET6}::1"])
        return pod

    def _add_remote(self, i: int) -> Remote:
        ns, uplink = f"{self.prefix}-remote{i}", f"uplink{i}"
        net4, net6 = f"10.213.{i}", f"fd00:213:{i:x}:"
        self._add_namespace(ns)
        _run(["ip", "-n", self.node, "link", "add", uplink, "type", "veth",
              "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", self.node, "addr", "add", f"{net4}.1/24", "dev", uplink])
        _run(["ip", "-n", self.node, "addr", "add", f"{net6}:1/64", "dev", uplink, "nodad"])
        _run(["ip", "-n", self.node, "link", "set", uplink, "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{net4}.2/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "addr", "add", f"{net6}:2/64", "dev", "eth0", "nodad"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if self.vxlan_port is not None:
            ns_dev = "vxlan0"
            self._add_vxlan(self.node, f"vxlan{i}", 100 + i, f"{net4}.1", f"{net4}.2", uplink)
            self._add_vxlan(ns, ns_dev, 100 + i, f"{net4}.2", f"{net4}.1", "eth0")
            net4, net6 = f"10.214.{i}", f"fd00:214:{i:x}:"
            for where, dev, host in ((self.node, f"vxlan{i}", 1), (ns, ns_dev, 2)):
                _run(["ip", "-n", where, "addr", "add", f"{net4}.{host}/24", "dev", dev])
                _run(["ip", "-n", where, "addr", "add", f"{net6}:{host}/64", "dev", dev, "nodad"])
                _run(["ip", "-n", where, "link", "set", dev, "up"])
        _run(["ip", "-n", ns, "route", "add", f"{POD_NET4}.0/24", "via", f"{net4}.1"])
        _run(["ip", "-n", ns, "-6", "route", "add", f"{POD_NET6}::/64", "via", f"{net6}:1"])
        return Remote(ns=ns, ipv4=f"{net4}.2", ipv6=_canonical6(f"{net6}:2"), uplink=uplink,
                      uplink_ifindex=self.ifindex(self.node, uplink),
                      node_ipv4=f"{net4}.1", node_ipv6=_canonical6(f"{net6}:1"))

    def _add_vxlan(self, ns: str, dev: str, vni: int, local: str, remote: str, lower: str) -> None:
        _run(["ip", "-n", ns, "link", "add", dev, "type", "vxlan", "id", str(vni), "local", local,
              "remote", remote, "dstport", str(self.vxlan_port), "dev", lower])

    def verify(self, timeout: float = 10.0) -> None:
        """Wait until every pod answers pings to every remote, v4 and v6; raise if one never does."""
        for pod in self.pods:
            for remote in self.remotes:
                for address in (remote.ipv4, remote.ipv6):
                    deadline = time.monotonic() + timeout
                    while True:
                        ping = ["ping", "-n", "-q", "-c", "1", "-W", "1", address]
                        done = subprocess.run(self.exec_argv(pod.ns, ping), capture_output=True,
                                              timeout=timeout + 5, check=False)
                        if done.returncode == 0:
                            break
                        if time.monotonic() > deadline:
                            raise TopologyError(f"{pod.ns} cannot reach {address} via {remote.uplink}")

    # -- shortcuts --------------------------------------------------------------------------------

    @property
    def pod(self) -> Pod:
        """The first pod."""
        return self.pods[0]

    @property
    def remote(self) -> Remote:
        """The first remote (behind ``uplink0``)."""
        return self.remotes[0]

    @property
    def uplink_ifindex(self) -> int:
        """ifindex of ``uplink0`` in the node namespace."""
        return self.remotes[0].uplink_ifindex

    @property
    def namespaces(self) -> list[str]:
        """Names of every namespace this topology made (node first)."""
        return list(self._namespaces)

    # -- operations -------------------------------------------------------------------------------

    @staticmethod
    def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: Sequence[str], *, gated: bool = False,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``ns``; the topology ends it (by PID) on close.

        The process's PID is that of ``argv`` itself (``ip netns exec`` execs it). With ``gated``
        the process waits, already under its final PID, until :meth:`release` is called (its stdin
        is the gate), so a filter naming the PID can be attached before it sends anything.
        """
        if gated:
            if "stdin" in kwargs:
                raise ValueError("a gated process's stdin is its gate")
            argv = ["sh", "-c", _GATE, "mace-gate", *argv]
            kwargs["stdin"] = subprocess.PIPE
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(ns, argv), **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def release(proc: subprocess.Popen[Any]) -> None:
        """Let a process started with ``gated=True`` run."""
        if proc.stdin is not None:
            proc.stdin.close()
            proc.stdin = None

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30.0) -> str:
        """Run ``argv`` in ``ns`` to completion and return its stdout; raise TopologyError on failure."""
        return _run(self.exec_argv(ns, argv), timeout=timeout)

    def sysctl(self, ns: str, values: dict[str, str]) -> None:
        """Set sysctls inside namespace ``ns`` only."""
        _run(self.exec_argv(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]))

    def allow_ping_sockets(self, ns: str) -> None:
        """Let every group open ICMP datagram sockets in ``ns`` (then iputils ping uses them, not raw)."""
        self.sysctl(ns, {"net.ipv4.ping_group_range": "0 2147483647"})

    @staticmethod
    def ifindex(ns: str, dev: str) -> int:
        """ifindex of device ``dev`` inside namespace ``ns``."""
        links = json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]))
        return int(links[0]["ifindex"])

    @staticmethod
    def delete_link(ns: str, dev: str) -> None:
        """Delete device ``dev`` in namespace ``ns`` (a veth takes its peer with it)."""
        _run(["ip", "-n", ns, "link", "del", "dev", dev])

    def set_tbf(self, dev: str, tbf: Tbf) -> None:
        """Make a TBF qdisc the root qdisc of ``dev`` in the node namespace."""
        _run(["tc", "-n", self.node, "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", f"{tbf.rate_bps}bit", "burst", str(tbf.burst_bytes), "limit", str(tbf.limit_bytes)])

    def clear_qdisc(self, dev: str) -> None:
        """Restore the default root qdisc of ``dev`` in the node namespace."""
        _run(["tc", "-n", self.node, "qdisc", "del", "dev", dev, "root"])

    # -- teardown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the processes started here and delete every namespace made here; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self._procs):
            try:
                stop_process(proc)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"pid {proc.pid}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                _run(["ip", "netns", "del", ns])
            except TopologyError as exc:
                errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise TopologyError("teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
