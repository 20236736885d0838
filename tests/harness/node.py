"""The harness's one node: namespaces, the link-local veth to the root namespace, the Node object, cgroups.

The node namespace is built by :class:`mace_lab.topology.Topology` (bridge ``br0`` for pods, uplink
``uplink0`` to a remote namespace). The harness adds, only inside its own namespaces: a default route via
the remote (so ``uplink0`` is the node's outer device) and the node end of a veth pair whose root end is
a new device in the root namespace (198.18.X.1/30, the benchmarking range of RFC 2544, never routed on the
internet; nothing existing there is changed). Not link-local: the API server proxies (pods/proxy, which
``kubectl mace`` uses to reach the agent) only to global unicast pod addresses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from common import HARNESS_ID, PREFIX, HarnessError, record, run

from mace_lab.topology import POD_NET4, POD_NET6, Topology

NODE_NAME = "mace-harness-node"
MGMT_DEV = "mgmt0"
ROOT_DEV = PREFIX[:15]
MAX_POD_INDEX = 200
GATEWAY4 = f"{POD_NET4}.1"
GATEWAY6 = f"{POD_NET6}::1"


def pod_addresses(index: int) -> tuple[str, str]:
    """IPv4 and IPv6 address of the harness pod with ``index`` (1..MAX_POD_INDEX) on the node's bridge."""
    return f"{POD_NET4}.{10 + index}", f"{POD_NET6}::{10 + index:x}"


def _link_subnet() -> ipaddress.IPv4Network:
    """A 198.18.X.0/30 that no root-namespace address or route overlaps (X derived from the harness id)."""
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show"]))
    used = [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for link in addrs for a in link.get("addr_info", [])]
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]))
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
            except ValueError:
                continue
    start = int(HARNESS_ID, 16)
    for step in range(200):
        third = 100 + (start + step) % 60
        candidate = ipaddress.IPv4Network(f"198.18.{third}.0/30")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise HarnessError("no free 198.18.X.0/30 for the link between the root and the node namespace")


def build_node(state: dict[str, Any]) -> dict[str, Any]:
    """Create node + remote namespaces and the root-link veth; return what ``down`` and pods need."""
    topo = Topology(pods=1, remotes=1, prefix=PREFIX, verify=True)
    node = {"netns": topo.node, "namespaces": topo.namespaces, "remote_ns": topo.remote.ns,
            "remote_ipv4": topo.remote.ipv4, "remote_ipv6": topo.remote.ipv6, "uplink": topo.remote.uplink,
            "uplink_ifindex": topo.uplink_ifindex, "bridge": "br0"}
    record(state, "node", node)  # before anything else can fail, so `down` removes it all
    # pod0 proved the path works; harness pods get their own namespaces, so drop it.
    run(["ip", "netns", "del", topo.pod.ns])
    node["namespaces"] = [ns for ns in topo.namespaces if ns != topo.pod.ns]
    record(state, "node", node)
    run(["ip", "-n", topo.node, "route", "add", "default", "via", topo.remote.ipv4])
    run(["ip", "-n", topo.node, "-6", "route", "add", "default", "via", topo.remote.ipv6])
    subnet = _link_subnet()
    root_ip, node_ip = (str(subnet.network_address + i) for i in (1, 2))
    node.update(root_dev=ROOT_DEV, root_ip=root_ip, node_ip=node_ip, link_prefix=subnet.prefixlen)
    record(state, "node", node)
    run(["ip", "link", "add", ROOT_DEV, "type", "veth", "peer", "name", MGMT_DEV, "netns", topo.node])
    run(["ip", "addr", "add", f"{root_ip}/{subnet.prefixlen}", "dev", ROOT_DEV])
    run(["ip", "link", "set", ROOT_DEV, "up"])
    run(["ip", "-n", topo.node, "addr", "add", f"{node_ip}/{subnet.prefixlen}", "dev", MGMT_DEV])
    run(["ip", "-n", topo.node, "link", "set", MGMT_DEV, "up"])
    record(state, "node", node)
    return node


def remove_node(node: dict[str, Any]) -> list[str]:
    """Delete the root-side device and every namespace of the node; return what could not be removed."""
    errors: list[str] = []
    if node.get("root_dev") and Path(f"/sys/class/net/{node['root_dev']}").exists():
        try:
            run(["ip", "link", "del", node["root_dev"]])
        except HarnessError as exc:
            errors.append(str(exc))
    for ns in reversed(node.get("namespaces", [])):
        if Path(f"/run/netns/{ns}").exists():
            try:
                run(["ip", "netns", "del", ns])
            except HarnessError as exc:
                errors.append(str(exc))
    return errors


def node_object(node: dict[str, Any]) -> dict[str, Any]:
    """The Node object for the harness node (its status is set separately, as a kubelet would)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME,
                                                       "kubernetes.io/os": "linux",
                                                       "kubernetes.io/arch": "amd64",
                                                       "mace.dev/harness": "true"}},
            "spec": {"podCIDR": f"{POD_NET4}.0/24"}}


def node_status(node: dict[str, Any], now: str) -> dict[str, Any]:
    """A kubelet's view of the node: addresses and a Ready condition."""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "mace harness node",
             "lastHeartbeatTime": now, "lastTransitionTime": now}
    return {"status": {"addresses": [{"type": "InternalIP", "address": node["node_ip"]},
                                     {"type": "Hostname", "address": NODE_NAME}],
                       "conditions": [ready],
                       "nodeInfo": {"kubeletVersion": "mace-harness", "operatingSystem": "linux",
                                    "architecture": "amd64", "containerRuntimeVersion": "mace-harness://1",
                                    "kernelVersion": os.uname().release, "osImage": "mace harness",
                                    "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                                    "bootID": ""}}}


# -- cgroups ----------------------------------------------------------------------------------------

def cgroup_roots() -> list[Path]:
    """Where harness containers get cgroups: the cgroup2 mount, and the v1 ``pids`` hierarchy if any."""
    roots: list[Path] = []
    with open("/proc/self/mountinfo", encoding="ascii", errors="replace") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", "", ""][:3]
            point = Path(left.split(" ")[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "pids" in options.split(",")):
                roots.append(point)
    if not roots:
        raise HarnessError("no cgroup2 mount and no cgroup v1 pids hierarchy found")
    return roots


def remove_cgroup_tree(top: Path) -> list[str]:
    """SIGKILL every process left in the harness cgroup tree ``top`` (all started by it), then rmdir it."""
    if not top.is_dir():
        return []
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    dirs.append(top)
    for directory in dirs:
        for pid in (directory / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    errors: list[str] = []
    for directory in dirs:
        deadline = time.monotonic() + 5
        while directory.exists():
            try:
                directory.rmdir()
            except OSError as exc:
                if time.monotonic() > deadline:
                    errors.append(f"rmdir {directory}: {exc}")
                    break
                time.sleep(0.05)
    return errors
