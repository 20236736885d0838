"""The eBPF programs an agent holds, read from inside its container (which sees the node's PIDs)."""

from __future__ import annotations

import json

from e2e_cluster import SYSTEM_NAMESPACE, Cluster, agent_pod

HELD_PROGRAMS = """
import os
own = open("/proc/self/cgroup").read()
ids = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/cgroup").read() != own:
            continue
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    except OSError:
        pass
print(" ".join(map(str, sorted(ids))))
"""


def held_programs(cluster: Cluster, node: str) -> set[int]:
    """IDs of the eBPF programs the processes of the agent container on ``node`` hold open."""
    agent = agent_pod(cluster, node)["metadata"]["name"]
    done = cluster.kubectl("-n", SYSTEM_NAMESPACE, "exec", agent, "-c", "agent", "--", "python3", "-c",
                           HELD_PROGRAMS)
    return {int(word) for word in done.stdout.split()}


def loaded_programs(cluster: Cluster) -> set[int] | None:
    """IDs of every eBPF program loaded on the node's kernel (``bpftool prog show``); None where the node
    has no bpftool."""
    done = cluster.node_run("bpftool", "prog", "show", "--json")
    if done.returncode != 0:
        return None
    return {int(prog["id"]) for prog in json.loads(done.stdout)}
