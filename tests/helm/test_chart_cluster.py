"""The chart against the local harness's real kube-apiserver: every object validates, `helm install` creates
them, each ServiceAccount may do exactly what its component needs, and `helm uninstall` removes it all.

The harness already holds the LatencyProbe CRD (it installs it itself), so the release is installed with
``crds.install=false``; the CRD object the chart renders is validated with a server-side dry run instead.
The harness has no kubelet or controllers: the DaemonSet and Deployment stay as API objects.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chart_tools import CHART, REPO, Tools

from mace.probe import LatencyProbe

pytestmark = pytest.mark.cluster

HARNESS = REPO / "tests" / "harness" / "cluster"
UP_TIMEOUT_S = 3600.0
NAMESPACE = "default"
NAMESPACED_KINDS = "serviceaccounts,services,deployments.apps,daemonsets.apps,secrets,configmaps"
CLUSTER_KINDS = "clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io"

# (verb, resource, subresource) each ServiceAccount may and may not use, cluster-wide.
OPERATOR_MAY = [("get", "latencyprobes.mace.dev", ""), ("list", "latencyprobes.mace.dev", ""),
                ("watch", "latencyprobes.mace.dev", ""), ("patch", "latencyprobes.mace.dev", ""),
                ("patch", "latencyprobes.mace.dev", "status"), ("get", "pods", ""), ("list", "pods", ""),
                ("watch", "pods", ""), ("create", "events", ""),
                ("watch", "customresourcedefinitions.apiextensions.k8s.io", "")]
OPERATOR_MAY_NOT = [("create", "latencyprobes.mace.dev", ""), ("delete", "latencyprobes.mace.dev", ""),
                    ("update", "latencyprobes.mace.dev", ""), ("patch", "pods", ""), ("delete", "pods", ""),
                    ("create", "pods", ""), ("get", "secrets", ""), ("list", "namespaces", ""),
                    ("create", "tokenreviews.authentication.k8s.io", ""), ("get", "nodes", ""),
                    ("delete", "customresourcedefinitions.apiextensions.k8s.io", "")]
AGENT_MAY = [("list", "latencyprobes.mace.dev", ""), ("watch", "latencyprobes.mace.dev", ""),
             ("patch", "latencyprobes.mace.dev", "status"),
             ("create", "tokenreviews.authentication.k8s.io", "")]
AGENT_MAY_NOT = [("get", "latencyprobes.mace.dev", ""), ("patch", "latencyprobes.mace.dev", ""),
                 ("delete", "latencyprobes.mace.dev", ""), ("update", "latencyprobes.mace.dev", "status"),
                 ("get", "pods", ""), ("list", "secrets", ""), ("create", "events", ""),
                 ("patch", "nodes", ""), ("create", "pods", "")]


def harness(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(HARNESS), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"cluster {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@pytest.fixture(scope="module")
def kubeconfig() -> Iterator[str]:
    """The harness's admin kubeconfig; the harness is brought up if needed (and then taken down)."""
    if os.geteuid() != 0:
        pytest.skip("the cluster harness needs root")
    started = harness("status", check=False).returncode != 0
    if started:
        harness("up", timeout=UP_TIMEOUT_S)
    try:
        env = dict(line.split("=", 1) for line in harness("env").stdout.splitlines() if "=" in line)
        yield env["KUBECONFIG"].strip("'\"")
    finally:
        if started and not os.environ.get("MACE_HARNESS_KEEP"):
            harness("down", timeout=300)


def kubectl(tools: Tools, kubeconfig: str, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([tools.kubectl, "--kubeconfig", kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def server_version(tools: Tools, kubeconfig: str) -> str:
    info = json.loads(kubectl(tools, kubeconfig, "version", "--output=json").stdout)
    return str(info["serverVersion"]["gitVersion"])


def can(tools: Tools, kubeconfig: str, user: str, verb: str, resource: str, subresource: str) -> bool:
    args = ["auth", "can-i", verb, resource, "--all-namespaces", "--as", user]
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = kubectl(tools, kubeconfig, *args, check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def left_of(tools: Tools, kubeconfig: str, release: str) -> list[str]:
    """Every object labelled as the release's (namespaced kinds in its namespace, cluster kinds)."""
    selector = f"app.kubernetes.io/instance={release}"
    found = kubectl(tools, kubeconfig, "get", NAMESPACED_KINDS, "-n", NAMESPACE, "-l", selector, "-o", "name")
    found_cluster = kubectl(tools, kubeconfig, "get", CLUSTER_KINDS, "-l", selector, "-o", "name")
    releases = kubectl(tools, kubeconfig, "get", "secrets", "-n", NAMESPACE,
                       "-l", f"owner=helm,name={release}", "-o", "name")
    return (found.stdout + found_cluster.stdout + releases.stdout).split()


def test_api_server_accepts_every_object_of_the_default_release(tools: Tools, kubeconfig: str) -> None:
    rendered = tools.helm_run("template", "mace", str(CHART), "--namespace", NAMESPACE,
                              "--kube-version", server_version(tools, kubeconfig)).stdout
    done = kubectl(tools, kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    names = {line.split()[0] for line in done.stdout.splitlines()}
    kinds = {name.split("/")[0].split(".")[0] for name in names}
    assert kinds == {"serviceaccount", "customresourcedefinition", "clusterrole", "clusterrolebinding",
                     "service", "daemonset", "deployment"}, done.stdout


def test_install_grants_least_privilege_and_uninstall_leaves_nothing(tools: Tools, kubeconfig: str,
                                                                     tmp_path: Path) -> None:
    release = f"mace-h{uuid.uuid4().hex[:6]}"
    env = {"KUBECONFIG": kubeconfig}
    try:
        installed = tools.helm_run("install", release, str(CHART), "--namespace", NAMESPACE,
                                   "--set", "crds.install=false", env=env)
        notes = installed.stdout.split("NOTES:", 1)[1]
        block = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.DOTALL)
        assert block, notes
        probe = LatencyProbe.model_validate(yaml.safe_load(textwrap.dedent(block.group(1))))
        assert probe.spec.pod == "pinger" and "kubectl get latencyprobes" in notes

        objects = left_of(tools, kubeconfig, release)
        assert sorted(o.split("/")[0] for o in objects if "sh.helm.release" not in o) == sorted([
            "serviceaccount", "serviceaccount", "service", "service", "deployment.apps", "daemonset.apps",
            "clusterrole.rbac.authorization.k8s.io", "clusterrole.rbac.authorization.k8s.io",
            "clusterrolebinding.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io"])

        operator = f"system:serviceaccount:{NAMESPACE}:{release}-operator"
        agent = f"system:serviceaccount:{NAMESPACE}:{release}-agent"
        wrong: list[str] = []
        for user, allowed, denied in ((operator, OPERATOR_MAY, OPERATOR_MAY_NOT),
                                      (agent, AGENT_MAY, AGENT_MAY_NOT)):
            sa = user.rsplit(":", 1)[1]
            wrong += [f"{sa} cannot {check}" for check in allowed if not can(tools, kubeconfig, user, *check)]
            wrong += [f"{sa} can {check}" for check in denied if can(tools, kubeconfig, user, *check)]
        assert wrong == []

        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({"crds": {"install": False},
                                          "operator": {"watchNamespaces": ["apps"]}}))
        tools.helm_run("upgrade", release, str(CHART), "--namespace", NAMESPACE, "--values", str(values),
                       env=env)
        assert can(tools, kubeconfig, operator, "list", "namespaces", "")

        tools.helm_run("uninstall", release, "--namespace", NAMESPACE, "--wait", env=env)
        assert left_of(tools, kubeconfig, release) == []
        assert not can(tools, kubeconfig, operator, "get", "latencyprobes.mace.dev", "")
    finally:
        tools.helm_run("uninstall", release, "--namespace", NAMESPACE, "--ignore-not-found", env=env,
                       check=False)
