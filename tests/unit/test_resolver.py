"""The node resolver on the real /proc, real cgroups (v1 and v2) and real network namespaces made here."""

from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from mace_agent.node import resolver
from mace_agent.node.netns import CLONE_NEWNET, run_in_netns
from mace_agent.node.resolver import Device, ResolveError

from mace_lab.topology import Topology, stop_process

CGROUP_V2 = Path("/sys/fs/cgroup/unified")
CGROUP_V1_PIDS = Path("/sys/fs/cgroup/pids")
_COUNTER = itertools.count()

T = TypeVar("T")


def _hex() -> str:
    return secrets.token_hex(32)


# -- cgroup path layouts (strings as the runtimes write them) ---------------------------------------

ID = "4f1c0e0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"
UID = "0e8b5c1d-2f3a-4b5c-8d9e-0a1b2c3d4e5f"


SLICE_UID = UID.replace("-", "_")
LAYOUTS = {
    "containerd, cgroupfs": f"/kubepods/besteffort/pod{UID}/{ID}",
    "containerd, systemd": f"/kubepods.slice/kubepods-besteffort.slice/"
                           f"kubepods-besteffort-pod{SLICE_UID}.slice/cri-containerd-{ID}.scope",
    "CRI-O, systemd": f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SLICE_UID}.slice/"
                      f"crio-{ID}.scope",
    "CRI-O, cgroupfs": f"/kubepods/burstable/pod{UID}/crio-{ID}",
    "Docker, cgroupfs": f"/docker/{ID}",
    "Docker, systemd": f"/system.slice/docker-{ID}.scope",
    "systemd names on v1": f"/system.slice/containerd.service/kubepods-besteffort-pod{SLICE_UID}.slice:"
                           f"cri-containerd:{ID}",
    "sub-cgroup inside": f"/kubepods.slice/kubepods-pod{SLICE_UID}.slice/"
                         f"cri-containerd-{ID}.scope/init.scope",
    "seen from a cgroupns": f"/../../kubepods/besteffort/pod{UID}/{ID}",
    "kind node in a container": f"/docker/{'a' * 64}/kubepods/besteffort/pod{UID}/{ID}",
}


@pytest.mark.parametrize("path", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_container_id_found_in_every_runtime_layout(path: str) -> None:
    assert resolver.container_of_path(path) == ID


@pytest.mark.parametrize("path", [
    "/", "/user.slice/user-0.slice/session-1.scope", f"/kubepods/besteffort/pod{UID}",
    f"/kubepods.slice/kubepods-burstable.slice/crio-conmon-{ID}.scope",                      # CRI-O's monitor
    f"/docker/{ID[:63]}", f"/docker/{ID}0", f"/docker/{ID.upper()}",
])
def test_paths_without_a_container(path: str) -> None:
    assert resolver.container_of_path(path) is None


def test_cgroup_file_with_v1_and_v2_lines() -> None:
    text = (f"12:pids:/kubepods/besteffort/pod{UID}/{ID}\n4:memory:/kubepods/besteffort/pod{UID}/{ID}\n"
            "1:name=systemd:/\n0::/\n")
    assert resolver.containers_of_cgroup_file(text) == {ID}


@pytest.mark.parametrize(("ref", "ident"), [
    (f"containerd://{ID}", ID), (f"cri-o://{ID}", ID), (f"docker://{ID}", ID), (ID, ID),
    (f"containerd://{ID.upper()}", ID),
])
def test_parse_container_reference(ref: str, ident: str) -> None:
    assert resolver.parse_container_id(ref) == ident


@pytest.mark.parametrize("ref", ["", "containerd://", f"rkt://{ID}", f"containerd://{ID[:12]}", "../../etc"])
def test_bad_container_reference_is_a_clear_422(ref: str) -> None:
    with pytest.raises(ResolveError) as caught:
        resolver.parse_container_id(ref)
    assert caught.value.status == 422
    assert caught.value.reason == "BadRequest"


# -- real cgroups -------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def spawn(argv: list[str], cgroup: Path | None = None, netns: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` already inside ``cgroup`` and the named network namespace."""
    procs_file = None if cgroup is None else str(cgroup / "cgroup.procs")
    ns_path = None if netns is None else f"/run/netns/{netns}"

    def enter() -> None:
        if procs_file is not None:
            with open(procs_file, "w") as handle:
                handle.write("0")
        if ns_path is not None:
            fd = os.open(ns_path, os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)

    return subprocess.Popen(argv, preexec_fn=enter)


class Cgroups:
    """Cgroup directories made by one test (v1 and v2), removed deepest first afterwards."""

    def __init__(self) -> None:
        self.top = f"mace-t{os.getpid()}-{next(_COUNTER)}"
        self.made: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def make(self, root: Path, relative: str) -> Path:
        path = root / self.top / relative.strip("/")
        for parent in reversed([path, *path.relative_to(root).parents][:-1]):
            full = root / parent
            if not full.exists():
                full.mkdir()
                self.made.append(full)
        return path

    def run_in(self, cgroup: Path | None, argv: list[str] | None = None,
               netns: str | None = None) -> subprocess.Popen[bytes]:
        """Start a process that joins ``cgroup`` and ``netns`` before it execs (it never runs elsewhere)."""
        proc = spawn(argv or ["sleep", "600"], cgroup=cgroup, netns=netns)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        for path in self.made:  # children our processes left behind (they inherited the cgroup)
            for pid in (path / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        for path in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            deadline = time.monotonic() + 5
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    if os.geteuid() != 0 or not (CGROUP_V2 / "cgroup.procs").exists() or not CGROUP_V1_PIDS.is_dir():
        pytest.skip("needs root and a writable hybrid cgroup tree (v2 at /sys/fs/cgroup/unified, v1 pids)")
    made = Cgroups()
    try:
        yield made
    finally:
        made.close()


def test_v2_systemd_layout_finds_the_process_and_its_children(cgroups: Cgroups) -> None:
    ident = _hex()
    path = cgroups.make(CGROUP_V2, f"kubepods.slice/kubepods-besteffort.slice/cri-containerd-{ident}.scope")
    parent = cgroups.run_in(path, ["sh", "-c", "sleep 600 & wait"])
    deadline = time.monotonic() + 5
    while len(found := resolver.processes_of_containers([ident])[ident]) < 2:
        assert time.monotonic() < deadline, f"child of {parent.pid} never showed up: {found}"
        time.sleep(0.02)
    assert found[0] == parent.pid
    assert found == sorted(found)


def test_v1_cgroupfs_layout(cgroups: Cgroups) -> None:
    ident = _hex()
    path = cgroups.make(CGROUP_V1_PIDS, f"kubepods/besteffort/pod{UID}/{ident}")
    proc = cgroups.run_in(path)
    assert resolver.processes_of_containers([ident]) == {ident: [proc.pid]}


def test_two_containers_and_crio_monitor_kept_apart(cgroups: Cgroups) -> None:
    one, two = _hex(), _hex()
    first = cgroups.run_in(cgroups.make(CGROUP_V2, f"pod/crio-{one}.scope"))
    second = cgroups.run_in(cgroups.make(CGROUP_V2, f"pod/docker-{two}.scope"))
    cgroups.run_in(cgroups.make(CGROUP_V2, f"pod/crio-conmon-{one}.scope"))
    assert resolver.processes_of_containers([one, two]) == {one: [first.pid], two: [second.pid]}


def test_missing_container_and_container_without_processes(cgroups: Cgroups) -> None:
    with pytest.raises(ResolveError) as missing:
        resolver.resolve([f"containerd://{_hex()}"], "10.0.0.1")
    assert (missing.value.reason, missing.value.status) == ("ContainerNotFound", 404)
    empty = _hex()
    cgroups.make(CGROUP_V2, f"kubepods/pod{UID}/{empty}")
    with pytest.raises(ResolveError) as idle:
        resolver.resolve([f"containerd://{empty}"], "10.0.0.1")
    assert (idle.value.reason, idle.value.status) == ("NoProcesses", 404)


# -- network namespaces -------------------------------------------------------------------------------

@pytest.fixture
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Topology(pods=1, remotes=1, verify=False) as made:
        made.run(made.node, ["ip", "route", "add", "default", "via", made.remote.ipv4])
        yield made


def _in_node(topo: Topology, func: Callable[[], T]) -> T:
    fd = os.open(f"/run/netns/{topo.node}", os.O_RDONLY)
    try:
        return run_in_netns(fd, func)
    finally:
        os.close(fd)


def test_pod_veth_and_outer_device_seen_from_the_node(topo: Topology, cgroups: Cgroups) -> None:
    proc = cgroups.run_in(None, netns=topo.pod.ns)
    host = Device(topo.ifindex(topo.node, topo.pod.host_veth), topo.pod.host_veth)
    assert _in_node(topo, lambda: resolver.pod_veth(proc.pid, topo.pod.ipv4)) == host
    assert _in_node(topo, lambda: resolver.pod_veth(proc.pid, topo.pod.ipv6)) == host
    outer = Device(topo.uplink_ifindex, topo.remote.uplink)
    assert _in_node(topo, resolver.outer_device) == outer
    assert _in_node(topo, lambda: resolver.outer_device(topo.remote.uplink)) == outer


def test_full_resolve_in_a_cgroup_and_a_pod_namespace(topo: Topology, cgroups: Cgroups) -> None:
    ident = _hex()
    path = cgroups.make(CGROUP_V2, f"kubepods/pod{UID}/{ident}")
    proc = cgroups.run_in(path, netns=topo.pod.ns)
    got = _in_node(topo, lambda: resolver.resolve([f"containerd://{ident}"], topo.pod.ipv4))
    assert got.proc_ids == (proc.pid,)
    assert got.proc_id == proc.pid
    assert got.veth_name == topo.pod.host_veth
    assert got.outer_ifindex == topo.uplink_ifindex
    assert got.model_dump(by_alias=True)["outerDevice"] == topo.remote.uplink


def test_lookup_failures_are_clear(topo: Topology, cgroups: Cgroups) -> None:
    proc = cgroups.run_in(None, netns=topo.pod.ns)
    with pytest.raises(ResolveError, match=r"no interface .* holds 10\.99\.99\.99") as wrong_ip:
        _in_node(topo, lambda: resolver.pod_veth(proc.pid, "10.99.99.99"))
    assert wrong_ip.value.reason == "VethNotFound"
    node_proc = cgroups.run_in(None, netns=topo.node)
    with pytest.raises(ResolveError, match="host network") as host_net:
        _in_node(topo, lambda: resolver.pod_veth(node_proc.pid, topo.remote.node_ipv4))
    assert host_net.value.reason == "VethNotFound"
    # Seen from the root namespace the pod's veth peer is elsewhere (in the node namespace).
    with pytest.raises(ResolveError, match="not in the agent's network namespace"):
        resolver.pod_veth(proc.pid, topo.pod.ipv4)
    with pytest.raises(ResolveError) as no_dev:
        _in_node(topo, lambda: resolver.outer_device("nosuchdev0"))
    assert no_dev.value.reason == "DeviceNotFound"
    topo.run(topo.node, ["ip", "route", "del", "default"])
    with pytest.raises(ResolveError, match="no default route"):
        _in_node(topo, resolver.outer_device)
