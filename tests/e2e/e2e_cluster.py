"""The clusters the e2e suite runs on: the real test node (tests/node, marker ``node``) and kind (marker
``kind``, where a Docker engine answers). Both install the chart as a user would and give the tests one
surface: kubectl, the agent endpoint on the node's port 9464, the address of a host outside the node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
NODE_CLUSTER = REPO / "tests" / "node" / "cluster"
CHART = Path(os.environ.get("MACE_NODE_SOURCE", REPO)) / "helm" / "mace"
"""The chart the node runs (MACE_NODE_SOURCE: another checkout to take the images and chart from)."""
AGENT_PORT = 9464
SYSTEM_NAMESPACE = "mace-system"
AGENT_SELECTOR = "app.kubernetes.io/component=agent"
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
T = TypeVar("T")


class ClusterError(RuntimeError):
    """A cluster command failed; the message holds its output."""


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; raise AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run(argv: list[str], *, check: bool = True, timeout: float = 60, input_text: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          input=input_text, env=env)
    if check and done.returncode != 0:
        raise ClusterError(f"{' '.join(argv[:6])}: exit {done.returncode}: {done.stderr[-3000:]}")
    return done


class Cluster:
    """What a test needs of a cluster with the chart installed."""

    name = "cluster"
    remote_addr = ""
    """An address outside the node: it answers ping, UDP echo on ``udp_port``, TCP echo on ``tcp_port``."""
    udp_port = 7007
    tcp_port = 7008
    lab_image = "localhost/mace-lab:dev"
    kubeconfig = ""
    kubectl_bin = "kubectl"
    helm_bin = "helm"

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args], check=check, timeout=timeout,
                   input_text=input_text)

    def helm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([self.helm_bin, "--kubeconfig", self.kubeconfig, *args], timeout=timeout)

    image_registry = "localhost"
    image_tag = "dev"

    def install_chart(self) -> None:
        """``helm install`` the chart as a user would: only the images' registry, tag and pull policy set."""
        self.helm("install", "mace", str(CHART), "-n", SYSTEM_NAMESPACE,
                  "--create-namespace", "--set", f"image.registry={self.image_registry}",
                  "--set", f"image.tag={self.image_tag}", "--set", "image.pullPolicy=Never", timeout=300)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def agent_get(self, node: str, path: str, lines: int = 0, timeout: float = 10) -> str:
        """GET http://NODE:9464/PATH as a scraper on the node's network would; with ``lines``, read at
        most that many lines of a stream (and stop after ``timeout`` s)."""
        raise NotImplementedError

    def node_run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on the node (its host tools: bpftool, findmnt)."""
        raise NotImplementedError

    def node_address(self, node: str) -> str:
        nodes = self.get_json("node", node)
        return next(a["address"] for a in nodes["status"]["addresses"] if a["type"] == "InternalIP")

    def close(self) -> None:
        """Remove the cluster if this session made it."""


def fetch_script(url: str, lines: int, timeout: float) -> str:
    """A python3 one-liner that prints ``url`` (or its first ``lines`` lines) within ``timeout`` s."""
    if not lines:
        return f"import urllib.request as u; print(u.urlopen({url!r}, timeout={timeout}).read().decode())"
    return ("import sys, urllib.request as u\n"
            f"r = u.urlopen({url!r}, timeout={timeout})\n"
            f"for _ in range({lines}):\n"
            "    line = r.readline()\n"
            "    if not line: break\n"
            "    sys.stdout.write(line.decode()); sys.stdout.flush()\n")


NODE_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
NODE_PATHS = ("/var/lib/mace-node", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods",
              "/var/lib/cni", "/run/containerd")


def node_footprint() -> dict[str, Any]:
    """What of the machine a test node changes: its namespaces, mounts, cgroups, processes, files, the
    sysctls the kubelet sets."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = sorted(line.split()[1] for line in mounts)
    processes = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"/var/lib/mace-node" in cmdline or b"mace-node-remote" in cmdline:
            processes.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return {
        "netns": sorted(p.name for p in Path("/run/netns").glob("*") if p.name.startswith("mace-node")),
        "cni netns": sorted(p.name for p in Path("/run/netns").glob("cni-*")),
        "mounts": [m for m in points if "mace-node" in m or "/run/netns/cni-" in m or "kubelet" in m],
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/mace-node")),
        "processes": sorted(processes),
        "files": [path for path in NODE_PATHS if Path(path).exists()],
        "sysctls": {name: Path("/proc/sys", name).read_text().strip() for name in NODE_SYSCTLS},
    }


class NodeCluster(Cluster):
    """The real single-node cluster of tests/node (brought up here unless it already runs; then ``close``
    takes it down and checks that the machine is as it was before)."""

    name = "node"

    def __init__(self) -> None:
        self.made = False
        self.before: dict[str, Any] = {}
        if run([str(NODE_CLUSTER), "status"], check=False).returncode != 0:
            self.before = node_footprint()
            run([str(NODE_CLUSTER), "up"], timeout=3600)
            self.made = True
        env = dict(line.split("=", 1) for line in run([str(NODE_CLUSTER), "env"]).stdout.splitlines())
        self.env = env
        self.kubeconfig = env["KUBECONFIG"]
        self.kubectl_bin = env["KUBECTL"]
        self.helm_bin = env["HELM"]
        self.remote_addr = env["MACE_REMOTE_ADDR"]
        self.udp_port = int(env["MACE_REMOTE_UDP_PORT"])
        self.tcp_port = int(env["MACE_REMOTE_TCP_PORT"])
        self.lab_image = env["MACE_LAB_IMAGE"]
        self.image_registry = env["MACE_IMAGE_REGISTRY"]
        self.image_tag = env["MACE_IMAGE_TAG"]

    def agent_get(self, node: str, path: str, lines: int = 0, timeout: float = 10) -> str:
        url = f"http://{self.node_address(node)}:{AGENT_PORT}{path}"
        done = run([str(NODE_CLUSTER), "exec-node", "python3", "-c", fetch_script(url, lines, timeout)],
                   check=False, timeout=timeout + 20)
        return done.stdout

    def node_run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run([str(NODE_CLUSTER), "exec-node", *argv], check=False, timeout=timeout)

    def close(self) -> None:
        if self.made and not os.environ.get("MACE_NODE_KEEP"):
            run([str(NODE_CLUSTER), "down"], timeout=300)
            after = node_footprint()
            left = {key: (self.before[key], after[key]) for key in after if after[key] != self.before[key]}
            assert not left, f"tests/node/cluster down left the machine changed (before, after): {left}"


class KindCluster(Cluster):
    """A kind cluster from kind-config.yaml (one control plane, two workers), images built with docker."""

    name = "kind"
    image_tag = "e2e"
    cluster_name = os.environ.get("MACE_KIND_NAME", "mace-e2e")

    def __init__(self) -> None:
        self.kubectl_bin = os.environ.get("KUBECTL", "kubectl")
        self.helm_bin = os.environ.get("HELM", "helm")
        self.kubeconfig = tempfile.mkstemp(prefix="mace-kind-kubeconfig.")[1]
        run(["kind", "create", "cluster", "--name", self.cluster_name,
             "--config", str(REPO / "kind-config.yaml"), "--kubeconfig", self.kubeconfig, "--wait", "180s"],
            timeout=600)
        try:
            images = []
            for component in ("agent", "operator"):
                ref = f"localhost/mace-{component}:e2e"
                dockerfile = str(REPO / f"Dockerfile.{component}")
                run(["docker", "build", "-q", "-f", dockerfile, "-t", ref, str(REPO)], timeout=1800)
                images.append(ref)
            lab = REPO / "tests" / "node" / "image"
            run(["docker", "build", "-q", "-f", str(lab / "Dockerfile.lab"), "-t", self.lab_image, str(lab)],
                timeout=900)
            run(["kind", "load", "docker-image", "--name", self.cluster_name, *images, self.lab_image],
                timeout=600)
            self.install_chart()
            self.remote_addr = self.node_address(f"{self.cluster_name}-control-plane")
            wait_for("agents and operator Ready", lambda: chart_ready(self), 300)
        except BaseException:
            self.close()
            raise

    def agent_get(self, node: str, path: str, lines: int = 0, timeout: float = 10) -> str:
        agent = agent_pod(self, node)["metadata"]["name"]
        script = fetch_script(f"http://{self.node_address(node)}:{AGENT_PORT}{path}", lines, timeout)
        done = self.kubectl("-n", SYSTEM_NAMESPACE, "exec", agent, "--", "python3", "-c", script, check=False,
                            timeout=timeout + 20)
        return done.stdout

    def node_run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(["docker", "exec", f"{self.cluster_name}-worker", *argv], check=False, timeout=timeout)

    def close(self) -> None:
        if not os.environ.get("MACE_KIND_KEEP"):
            run(["kind", "delete", "cluster", "--name", self.cluster_name], check=False, timeout=300)
            Path(self.kubeconfig).unlink(missing_ok=True)


def kind_skip_reason() -> str | None:
    """Why kind cannot run here, or None."""
    for tool in ("docker", "kind", os.environ.get("KUBECTL", "kubectl"), os.environ.get("HELM", "helm")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker engine answers ('docker info' failed): kind needs one"
    return None


def node_skip_reason() -> str | None:
    """Why the test node cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, containerd)"
    missing = [t for t in ("containerd", "ctr", "runc", "buildah", "debootstrap", "go", "nsenter", "gcc")
               if shutil.which(t) is None]
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("containernetworking-plugins")
    return f"missing {', '.join(missing)} (sudo scripts/dev setup)" if missing else None


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def chart_ready(cluster: Cluster) -> bool:
    """Every agent and the operator Ready."""
    groups = [pods(cluster, SYSTEM_NAMESPACE, s) for s in (AGENT_SELECTOR, OPERATOR_SELECTOR)]
    return all(group and all(is_ready(p) for p in group) for group in groups)


def agent_pod(cluster: Cluster, node: str) -> dict[str, Any]:
    """The (one, Ready) agent pod on ``node``."""
    def ready() -> dict[str, Any] | None:
        found = [p for p in pods(cluster, SYSTEM_NAMESPACE, AGENT_SELECTOR)
                 if p["spec"].get("nodeName") == node and is_ready(p)]
        return found[0] if len(found) == 1 else None

    return wait_for(f"the agent on {node}", ready, 120)
