"""The agent's and the operator's rights exactly as the chart grants them: RBAC per ServiceAccount
(``kubectl auth can-i``), and under the real runtime the agent's capability set, read-only root file
system and seccomp filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from e2e_cluster import AGENT_SELECTOR, OPERATOR_SELECTOR, REPO, SYSTEM_NAMESPACE, Cluster, pods

CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "NET_RAW": 13, "SYS_PTRACE": 19, "SYS_ADMIN": 21,
                   "NET_ADMIN": 12, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

AGENT_RIGHTS = [
    ("list", "latencyprobes.mace.dev", True), ("watch", "latencyprobes.mace.dev", True),
    ("patch", "latencyprobes.mace.dev/status", True), ("create", "tokenreviews.authentication.k8s.io", True),
    ("patch", "latencyprobes.mace.dev", False), ("delete", "latencyprobes.mace.dev", False),
    ("get", "secrets", False), ("list", "pods", False), ("create", "pods", False), ("get", "nodes", False),
]
"""What the agent may do, cluster-wide: read probes, write their status, check callers' tokens."""

OPERATOR_RIGHTS = [
    ("get", "latencyprobes.mace.dev", True), ("patch", "latencyprobes.mace.dev", True),
    ("patch", "latencyprobes.mace.dev/status", True), ("list", "pods", True), ("watch", "pods", True),
    ("create", "events", True), ("list", "customresourcedefinitions.apiextensions.k8s.io", True),
    ("create", "pods", False), ("delete", "pods", False), ("get", "secrets", False),
    ("create", "latencyprobes.mace.dev", False), ("delete", "latencyprobes.mace.dev", False),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", False), ("get", "nodes", False),
]

AGENT_SELF = """
import json, os
own = open("/proc/self/cgroup").read()
main = None
for pid in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        if open(f"/proc/{pid}/cgroup").read() == own and b"serve" in cmdline:
            main = pid
            break
    except OSError:
        pass
fields = dict(line.split(":", 1) for line in open(f"/proc/{main}/status").read().splitlines())
try:
    open("/mace-write-test", "w")
    root = "writable"
except OSError as error:
    root = error.errno
open("/tmp/mace-write-test", "w").close()
os.unlink("/tmp/mace-write-test")
print(json.dumps({"pid": main, "CapEff": fields["CapEff"].strip(), "CapBnd": fields["CapBnd"].strip(),
                  "Seccomp": fields["Seccomp"].strip(), "root": root}))
"""
EROFS = 30


def service_account(cluster: Cluster, selector: str) -> str:
    pod = pods(cluster, SYSTEM_NAMESPACE, selector)[0]
    return f"system:serviceaccount:{SYSTEM_NAMESPACE}:{pod['spec']['serviceAccountName']}"


def can_i(cluster: Cluster, user: str, verb: str, resource: str) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--all-namespaces", f"--as={user}"]
    if sub:
        args.append(f"--subresource={sub}")
    done = cluster.kubectl(*args, check=False)
    assert done.stdout.strip() in ("yes", "no"), done.stderr
    return done.stdout.strip() == "yes"


@pytest.mark.parametrize(("selector", "rights"), [(AGENT_SELECTOR, AGENT_RIGHTS),
                                                   (OPERATOR_SELECTOR, OPERATOR_RIGHTS)],
                         ids=["agent", "operator"])
def test_each_service_account_may_do_exactly_what_the_chart_grants(
        cluster: Cluster, selector: str, rights: list[tuple[str, str, bool]]) -> None:
    user = service_account(cluster, selector)
    got = [(verb, resource, can_i(cluster, user, verb, resource)) for verb, resource, _ in rights]
    assert got == rights


def test_the_agent_runs_with_the_charts_capabilities_read_only_root_and_seccomp(cluster: Cluster) -> None:
    values = yaml.safe_load(Path(REPO / "helm" / "mace" / "values.yaml").read_text())["agent"]
    wanted = sum(1 << CAPABILITY_BITS[cap] for cap in values["capabilities"])
    agent = pods(cluster, SYSTEM_NAMESPACE, AGENT_SELECTOR)[0]["metadata"]["name"]
    done = cluster.kubectl("-n", SYSTEM_NAMESPACE, "exec", agent, "-c", "agent", "--", "python3", "-c",
                           AGENT_SELF)
    seen = json.loads(done.stdout)
    assert seen["pid"], "no mace-agent serve process in the agent's container"
    assert int(seen["CapEff"], 16) == wanted, seen
    assert int(seen["CapBnd"], 16) == wanted, seen
    assert seen["Seccomp"] == "2", seen  # a seccomp filter (RuntimeDefault), not unconfined
    assert seen["root"] == EROFS, seen
