"""Helpers of the agent's cluster suites: the harness command, its pods, probes, the agent's endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests" / "harness" / "cluster"
ICMP = {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]}

T = TypeVar("T")


def harness(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tests/harness/cluster ARGS``; with ``check``, fail the test with its stderr on error."""
    done = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"cluster {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


UP_TIMEOUT_S = 3600.0
"""Generous: the first `up` on a machine builds kube-apiserver and kubectl from source."""


def skip_reason() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "the cluster harness needs root (network namespaces, cgroups, eBPF)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel exposes no BTF: the agent cannot run"
    return None


@contextlib.contextmanager
def harness_session() -> Iterator[dict[str, str]]:
    """The harness for a test session as its env: reused if up, else brought up and taken down at the
    end (unless ``MACE_HARNESS_KEEP`` is set)."""
    started = harness("status", check=False).returncode != 0
    if started:
        harness("up", timeout=UP_TIMEOUT_S)
    try:
        yield read_env()
    finally:
        if started and not os.environ.get("MACE_HARNESS_KEEP"):
            harness("down", timeout=300)


def read_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in harness("env").stdout.splitlines() if "=" in line)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class HarnessPod:
    """A pod the harness runs on its node (what ``cluster pod`` printed)."""

    name: str
    namespace: str
    pid: int
    container_id: str
    ip: str
    host_veth: str

    @classmethod
    def parse(cls, line: str) -> HarnessPod:
        data = json.loads(line)
        return cls(data["name"], data["namespace"], int(data["pid"]), data["containerID"],
                   data.get("podIP") or "", data.get("hostVeth") or "")


class Cluster:
    """What the agent suites do with the harness: pods, probes, the agent's endpoint."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        configuration = client.Configuration()
        config.load_kube_config(config_file=env["KUBECONFIG"],  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
        api = client.ApiClient(configuration)
        self.core: Any = client.CoreV1Api(api)  # plain dict bodies in, models out
        self.custom: Any = client.CustomObjectsApi(api)
        self.agent_url = env["MACE_AGENT_URL"]
        self.remote = env["MACE_REMOTE_ADDR"]
        self.node = env["MACE_NODE"]

    def kubectl(self, *args: str) -> str:
        """Run the harness's real kubectl; its stdout."""
        return harness("kubectl", *args).stdout

    # -- pods ---------------------------------------------------------------------------------------

    def pod(self, namespace: str, name: str, *cmd: str) -> HarnessPod:
        return HarnessPod.parse(harness("pod", name, "-n", namespace, "--", *cmd).stdout)

    def ping_pod(self, namespace: str, name: str, interval: str = "0.1") -> HarnessPod:
        """A pod whose main process pings the remote (the outer device is on its path)."""
        return self.pod(namespace, name, "ping", "-n", "-i", interval, self.remote)

    def restart_pod(self, namespace: str, name: str) -> HarnessPod:
        return HarnessPod.parse(harness("pod", name, "-n", namespace, "--restart").stdout)

    def delete_pod(self, namespace: str, name: str) -> None:
        harness("pod", name, "-n", namespace, "--delete", check=False)

    # -- probes -------------------------------------------------------------------------------------

    def create_probe(self, namespace: str, name: str, pod: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LatencyProbe", "metadata": {"name": name},
                "spec": {"pod": pod, "in": ICMP, "out": ICMP, **spec}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def probe(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                             PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = (self.probe(namespace, name) or {}).get("status") or {}
        return status

    def wait_status(self, namespace: str, name: str, accept: Callable[[dict[str, Any]], bool],
                    timeout: float = 30.0) -> dict[str, Any]:
        """The probe's status once ``accept(status)`` holds."""

        def check() -> dict[str, Any] | None:
            status = self.status(namespace, name)
            return status if status and accept(status) else None

        return wait_for(f"the status of probe {namespace}/{name}", check, timeout)

    def wait_samples(self, namespace: str, name: str, at_least: int = 1,
                     timeout: float = 30.0) -> dict[str, Any]:
        """The probe's status once the agent published ``at_least`` samples while Measuring."""
        return self.wait_status(
            namespace, name,
            lambda s: s.get("phase") == "Measuring" and (s.get("results") or {}).get("state") == "Measuring"
            and ((s.get("results") or {}).get("matched") or 0) >= at_least, timeout)

    def delete_probe(self, namespace: str, name: str, wait: bool = True) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise
        if wait:
            wait_for(f"probe {namespace}/{name} to be gone", lambda: self.probe(namespace, name) is None, 30)

    # -- the agent ----------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """GET ``path`` from the agent: (status, body)."""
        try:
            with urllib.request.urlopen(self.agent_url + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """POST JSON to the agent: (status, decoded body)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.agent_url + path, data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def agent_pid(self) -> int:
        """PID of the agent process (the main process of the harness's agent pod)."""
        record = Path(self.env["KUBECONFIG"]).parent / "pods" / "mace-system_mace-agent-harness.json"
        return int(json.loads(record.read_text())["pid"])

    def _agent_bpf_ids(self, kind: str) -> set[int]:
        """IDs of the eBPF objects of ``kind`` (``prog`` or ``map``) the agent process holds open."""
        pid = self.agent_pid()
        ids = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) != f"anon_inode:bpf-{kind}":
                    continue
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            except FileNotFoundError:
                continue
            ids |= {int(line.split()[1]) for line in info.splitlines() if line.startswith(f"{kind}_id:")}
        return ids

    def agent_map_entries(self, name: str) -> int:
        """Entries in the agent's eBPF map called ``name`` (bpftool's view of the kernel's map)."""
        for map_id in self._agent_bpf_ids("map"):
            shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)],
                                              capture_output=True, text=True, check=True).stdout)
            if shown.get("name") == name:
                dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                                      capture_output=True, text=True, check=True).stdout
                return len(json.loads(dump))
        raise AssertionError(f"the agent holds no eBPF map called {name}")

    def agent_programs(self) -> set[int]:
        """IDs of the eBPF programs the agent process holds open."""
        return self._agent_bpf_ids("prog")

    # -- the operator -------------------------------------------------------------------------------

    def operator_metrics(self) -> str:
        """The operator's ``/metrics`` page."""
        base = self.env.get("MACE_OPERATOR_METRICS_URL")
        assert base, "this harness's operator serves no /metrics: tests/harness/cluster restart operator"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            return str(response.read().decode())
