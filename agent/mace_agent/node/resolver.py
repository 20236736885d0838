"""Node-local lookups the operator cannot make: container -> PIDs -> pod interface -> host veth, outer device.

* Container IDs are found in ``/proc/<pid>/cgroup``: every hierarchy line (cgroup v1 ``N:ctrl:/path`` and
  v2 ``0::/path``) is searched for the deepest path component that carries a 64-hex container ID in one of
  the runtimes' layouts: ``<id>`` (containerd/Docker/CRI-O with the cgroupfs driver), ``docker-<id>.scope``,
  ``cri-containerd-<id>.scope``, ``crio-<id>.scope`` (systemd driver) and
  ``<slice>:cri-containerd:<id>`` (the systemd driver's names on a cgroupfs tree). CRI-O's monitor
  (``crio-conmon-<id>.scope``) is not part of the container.
* A PID's network namespace is entered (by one short-lived thread, see :mod:`.netns`) to find the interface
  holding the pod IP; that interface must be a veth whose peer lives in the agent's own namespace.
* The outer device is the device of the agent namespace's default route (IPv4, else IPv6) unless named.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from mace.resolve import Resolution
from mace_agent.node.netns import run_in_netns

PROC = "/proc"
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT = re.compile(r"^(?:(?P<prefix>[A-Za-z0-9_.:@-]*?)[-:])?(?P<id>[0-9a-f]{64})(?:\.scope)?$")
_SCHEMES = ("containerd", "cri-o", "docker")
_WALK_LIMIT = 200_000
"""Most cgroup directories inspected when telling "no such container" from "container without processes"."""


class ResolveError(Exception):
    """A lookup failed; ``reason`` is one of the contract's reasons, ``status`` the HTTP status to answer."""

    def __init__(self, reason: str, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Device:
    """A network device in the agent's namespace."""

    ifindex: int
    name: str


# -- containers and processes ---------------------------------------------------------------------

def parse_container_id(ref: str) -> str:
    """The 64-hex ID of a Kubernetes container reference such as ``containerd://<id>`` (or a bare ID)."""
    scheme, sep, ident = ref.partition("://")
    if not sep:
        scheme, ident = "", ref
    if sep and scheme not in _SCHEMES:
        raise ResolveError("BadRequest", f"container ID {ref!r}: unknown runtime {scheme!r} "
                           f"(known: {', '.join(_SCHEMES)})", 422)
    ident = ident.lower()
    if not _HEX_ID.match(ident):
        raise ResolveError("BadRequest", f"container ID {ref!r} is not 64 hex digits", 422)
    return ident


def container_of_path(path: str) -> str | None:
    """The container ID carried by a cgroup path (its deepest component that names one), if any."""
    for component in reversed(path.split("/")):
        match = _COMPONENT.match(component)
        if match:
            prefix = match.group("prefix") or ""
            return None if prefix.endswith("conmon") else match.group("id")
    return None


def containers_of_cgroup_file(text: str) -> set[str]:
    """Container IDs named by the lines of one ``/proc/<pid>/cgroup`` file (v1 and v2 lines alike)."""
    found: set[str] = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            ident = container_of_path(parts[2])
            if ident is not None:
                found.add(ident)
    return found


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def processes_of_containers(container_ids: Iterable[str]) -> dict[str, list[int]]:
    """PIDs (root PID namespace, sorted) of every process in each of the given containers."""
    wanted = set(container_ids)
    found: dict[str, list[int]] = {ident: [] for ident in wanted}
    if not wanted:
        return found
    with os.scandir(PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            text = _read(f"{PROC}/{entry.name}/cgroup")
            if text is None or not any(ident in text for ident in wanted):
                continue
            for ident in containers_of_cgroup_file(text) & wanted:
                found[ident].append(int(entry.name))
    for pids in found.values():
        pids.sort()
    return found


def cgroup_roots(mountinfo: str = f"{PROC}/self/mountinfo") -> list[str]:
    """Mount points of every cgroup (v1) and cgroup2 file system visible to this process."""
    roots: list[str] = []
    text = _read(mountinfo) or ""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            roots.append(left.split(" ")[4].replace("\\040", " "))
    return roots


def cgroup_exists(container_id: str, roots: Sequence[str]) -> bool:
    """Whether some cgroup directory under ``roots`` names the container (bounded walk)."""
    seen = 0
    for root in roots:
        for _dir, subdirs, _files in os.walk(root):
            for name in subdirs:
                if container_id in name and container_of_path(name) == container_id:
                    return True
            seen += len(subdirs)
            if seen > _WALK_LIMIT:
                return False
    return False


# -- network ----------------------------------------------------------------------------------------

def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def _pod_side(pod_ip: str, agent_ns_fd: int) -> tuple[int, str, str | None, int | None, int | None, int]:
    """In the pod's namespace: ifindex, name, kind, peer ifindex, peer nsid, nsid of the agent's namespace."""
    wanted = ipaddress.ip_address(pod_ip)
    with IPRoute() as ipr:
        index = None
        for addr in ipr.get_addr(family=4 if wanted.version == 4 else 10):
            if ipaddress.ip_address(addr.get_attr("IFA_ADDRESS")) == wanted:
                index = int(addr["index"])
                break
        if index is None:
            raise ResolveError("VethNotFound", f"no interface in the pod's network namespace holds {pod_ip}")
        link = ipr.get_links(index)[0]
        agent_nsid = (ipr.get_netnsid(fd=agent_ns_fd) or {}).get("nsid")
        return (index, link.get_attr("IFLA_IFNAME"), _kind(link), link.get_attr("IFLA_LINK"),
                link.get_attr("IFLA_LINK_NETNSID"), -1 if agent_nsid is None else int(agent_nsid))


def pod_veth(pid: int, pod_ip: str) -> Device:
    """The host-side veth (in the agent's namespace) whose peer holds ``pod_ip`` in ``pid``'s namespace."""
    try:
        ipaddress.ip_address(pod_ip)
    except ValueError:
        raise ResolveError("BadRequest", f"podIP {pod_ip!r} is not an IP address", 422) from None
    try:
        pod_fd = os.open(f"{PROC}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ResolveError("NoProcesses", f"process {pid} exited during the lookup") from None
    agent_fd = os.open(f"{PROC}/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(pod_fd).st_ino == os.fstat(agent_fd).st_ino:
            raise ResolveError("VethNotFound", f"process {pid} shares the agent's network namespace "
                               "(host network): there is no pod veth to measure")
        index, name, kind, peer, peer_nsid, agent_nsid = run_in_netns(
            pod_fd, lambda: _pod_side(pod_ip, agent_fd))
        if kind != "veth" or peer is None:
            raise ResolveError("VethNotFound", f"pod interface {name} holding {pod_ip} is a "
                               f"{kind or 'device of unknown kind'}, not a veth")
        if peer_nsid is None or peer_nsid != agent_nsid:
            raise ResolveError("VethNotFound", f"the veth peer of pod interface {name} is not in the "
                               "agent's network namespace")
        with IPRoute() as ipr:
            links = ipr.get_links(peer)
            pod_nsid = (ipr.get_netnsid(fd=pod_fd) or {}).get("nsid")
        host = links[0] if links else None
        if host is None or _kind(host) != "veth" or host.get_attr("IFLA_LINK") != index \
                or host.get_attr("IFLA_LINK_NETNSID") != pod_nsid:
            raise ResolveError("VethNotFound", f"ifindex {peer} in the agent's namespace is not the veth "
                               f"peer of pod interface {name}")
        return Device(int(host["index"]), str(host.get_attr("IFLA_IFNAME")))
    finally:
        os.close(pod_fd)
        os.close(agent_fd)


def outer_device(name: str | None = None) -> Device:
    """The named device, or the device of the default route (IPv4, else IPv6), in the agent's namespace."""
    with IPRoute() as ipr:
        if name:
            indices = ipr.link_lookup(ifname=name)
            if not indices:
                raise ResolveError("DeviceNotFound",
                                   f"no device named {name!r} in the agent's network namespace")
            return Device(int(indices[0]), name)
        for family in (4, 10):
            best: tuple[int, int] | None = None
            for route in ipr.get_routes(family=family, table=254):
                if route["dst_len"] != 0:
                    continue
                oif = route.get_attr("RTA_OIF")
                if oif is None:
                    multipath = route.get_attr("RTA_MULTIPATH") or []
                    oif = multipath[0]["oif"] if multipath else None
                if oif is None:
                    continue
                metric = route.get_attr("RTA_PRIORITY") or 0
                if best is None or metric < best[0]:
                    best = (metric, int(oif))
            if best is not None:
                links = ipr.get_links(best[1])
                return Device(best[1], str(links[0].get_attr("IFLA_IFNAME")))
    raise ResolveError("DeviceNotFound", "the agent's network namespace has no default route; "
                       "set outerDevice in the probe")


# -- the whole lookup -------------------------------------------------------------------------------

def resolve(container_refs: Sequence[str], pod_ip: str, outer: str | None = None) -> Resolution:
    """Resolve containers + pod IP (+ optional outer device name) into PIDs, host veth and outer device
    (the ``/resolve`` answer)."""
    if not container_refs:
        raise ResolveError("BadRequest", "containerIDs is empty", 422)
    ids = [parse_container_id(ref) for ref in container_refs]
    found = processes_of_containers(ids)
    first = found[ids[0]]
    if not first:
        if cgroup_exists(ids[0], cgroup_roots()):
            raise ResolveError("NoProcesses", f"container {container_refs[0]} has no processes on this node")
        raise ResolveError("ContainerNotFound", f"container {container_refs[0]} is not on this node")
    pids = tuple(sorted({pid for ident in ids for pid in found[ident]}))
    veth, device = pod_veth(first[0], pod_ip), outer_device(outer)
    return Resolution(proc_ids=pids, proc_id=first[0], veth_ifindex=veth.ifindex, veth_name=veth.name,
                      outer_ifindex=device.ifindex, outer_device=device.name)
