"""A minimal kubelet for one harness pod: runs its container and keeps its Pod object's status true.

    python kubelet.py --name NAME --namespace NS [--host-network] [--label K=V] [--port NAME=PORT]
                      [--ready-url URL] [--restart-policy Never|Always] -- CMD...

Like a real kubelet with a container runtime it gives the pod a network namespace with a veth on the
node's bridge (or the node's own namespace with ``--host-network``), gives every container start a fresh
64-hex container ID and a cgroup named by it (containerd's cgroupfs layout,
``<root>/<prefix>/kubepods/besteffort/pod<uid>/<id>``), runs CMD inside both, and writes the Pod's status
(phase, podIP, conditions, ``containerStatuses[].containerID = containerd://<id>``). It follows the Pod:
deleting it (``kubectl delete pod``) stops the container and removes the object. Signals: SIGHUP restarts the
container (new ID, new PID, ``restartCount`` + 1), SIGTERM stops it and deletes the Pod. Its record, for
the ``cluster`` command, is ``.harness/pods/<ns>_<name>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    KUBECONFIG,
    LOGS_DIR,
    PODS_DIR,
    PREFIX,
    HarnessError,
    Proc,
    load_state,
    locked,
    run,
)
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from node import GATEWAY4, GATEWAY6, MAX_POD_INDEX, NODE_NAME, cgroup_roots, pod_addresses

CLONE_NEWNET = 0x40000000
IMAGE = "mace.local/harness-container:latest"
MERGE = "application/merge-patch+json"
STOP_GRACE = 5.0
READY_PERIOD = 1.0


def now() -> str:
    """RFC 3339 UTC timestamp, seconds precision, as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_path(namespace: str, name: str) -> Path:
    """Where the kubelet of pod ``namespace/name`` keeps its record."""
    return PODS_DIR / f"{namespace}_{name}.json"


def read_record(namespace: str, name: str) -> dict[str, Any] | None:
    """The kubelet record of a pod, or None."""
    try:
        return dict(json.loads(record_path(namespace, name).read_text()))
    except (FileNotFoundError, ValueError):
        return None


class Container:
    """One start of the pod's container: its ID, cgroups and process."""

    def __init__(self, pod_uid: str, argv: list[str], netns_path: str, log_path: Path,
                 env: dict[str, str]) -> None:
        self.id = secrets.token_hex(32)
        self.cgroups = [root / PREFIX / "kubepods" / "besteffort" / f"pod{pod_uid}" / self.id
                        for root in cgroup_roots()]
        for path in self.cgroups:
            path.mkdir(parents=True)
        procs_fds = [os.open(path / "cgroup.procs", os.O_WRONLY) for path in self.cgroups]
        ns_fd = os.open(netns_path, os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)

        def enter() -> None:  # runs in the child between fork and exec: only raw system calls
            for fd in procs_fds:
                os.write(fd, b"0")
            if libc.setns(ns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")

        self.started_at = now()
        try:
            with open(log_path, "ab") as out:
                out.write(f"--- {self.started_at} container {self.id} starts: {argv}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=enter, env={**os.environ, **env})
        except OSError:
            self.remove_cgroups()
            raise
        finally:
            for fd in [*procs_fds, ns_fd]:
                os.close(fd)
        self.exit_code: int | None = None
        self.finished_at: str | None = None

    def stop(self) -> None:
        """SIGTERM the container's process, SIGKILL after a grace period, then what is left in its cgroups."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exited(self.proc.returncode)
        for path in self.cgroups:
            with contextlib.suppress(FileNotFoundError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        self.remove_cgroups()

    def exited(self, code: int | None) -> None:
        if self.finished_at is None:
            self.exit_code = code
            self.finished_at = now()

    def remove_cgroups(self) -> None:
        for path in self.cgroups:
            deadline = time.monotonic() + 5
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)

    def terminated(self) -> dict[str, Any]:
        code = self.exit_code if self.exit_code is not None else -1
        return {"exitCode": code if code >= 0 else 128 - code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": self.started_at, "finishedAt": self.finished_at or now(),
                "containerID": f"containerd://{self.id}"}


class Kubelet:
    """Supervises one pod: network, containers, Pod object."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()  # put() is signal-safe
        self.state = load_state()
        node = self.state.get("node")
        if not node:
            raise HarnessError("the harness is not up (no node recorded); run `tests/harness/cluster up`")
        self.node = node
        api_client = config.new_client_from_config(str(KUBECONFIG))  # type: ignore[no-untyped-call]
        self.api: Any = client.CoreV1Api(api_client)
        self.index: int | None = None
        self.netns: str | None = None
        self.netns_path = ""
        self.container: Container | None = None
        self.restart_count = 0
        self.ready = False
        self.pod_uid = ""
        self.pod_ip = ""
        self.log_path = LOGS_DIR / "pods" / f"{args.namespace}_{args.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.start_time = now()
        self.record: dict[str, Any] = {"name": args.name, "namespace": args.namespace,
                                       "supervisor": Proc.of("kubelet", os.getpid()).as_json(),
                                       "state": "starting", "log": str(self.log_path)}

    # -- record -----------------------------------------------------------------------------------

    def save(self, **changes: Any) -> None:
        self.record.update(changes)
        path = record_path(self.args.namespace, self.args.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def claim(self) -> None:
        """Take this pod's record slot and (without host networking) a free pod index, under the lock."""
        PODS_DIR.mkdir(parents=True, exist_ok=True)
        # Not the harness lock: `cluster up` holds that one while it starts the agent's kubelet.
        with locked(PODS_DIR / ".lock"):
            existing = read_record(self.args.namespace, self.args.name)
            if existing is not None and Proc(**existing["supervisor"]).alive():
                raise HarnessError(f"pod {self.args.namespace}/{self.args.name} already runs "
                                   f"(kubelet pid {existing['supervisor']['pid']})")
            if not self.args.host_network:
                used = set()
                for path in PODS_DIR.glob("*.json"):
                    other = json.loads(path.read_text())
                    if other.get("index") and Proc(**other["supervisor"]).alive():
                        used.add(other["index"])
                free = [i for i in range(1, MAX_POD_INDEX + 1) if i not in used]
                if not free:
                    raise HarnessError(f"all {MAX_POD_INDEX} pod addresses are taken")
                self.index = free[0]
            self.save(index=self.index)

    # -- network ----------------------------------------------------------------------------------

    def network(self) -> str:
        """Make the pod's namespace and veth (or use the node's); return the namespace's path."""
        if self.args.host_network:
            self.pod_ip = self.node["node_ip"]
            return f"/run/netns/{self.node['netns']}"
        assert self.index is not None
        ipv4, ipv6 = pod_addresses(self.index)
        self.pod_ip = ipv4
        ns, node_ns, veth = f"{PREFIX}-pod{self.index}", self.node["netns"], f"vpod{self.index}"
        if Path(f"/run/netns/{ns}").exists():  # left by a kubelet that was killed: its slot is free now
            run(["ip", "netns", "del", ns])
        run(["ip", "netns", "add", ns])
        self.netns = ns
        self.save(netns=ns, podIP=ipv4, podIPv6=ipv6, hostVeth=veth)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", node_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", node_ns, "link", "set", veth, "master", self.node["bridge"], "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ipv4}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "addr", "add", f"{ipv6}/64", "dev", "eth0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY4])
        run(["ip", "-n", ns, "-6", "route", "add", "default", "via", GATEWAY6])
        return f"/run/netns/{ns}"

    # -- the Pod object ---------------------------------------------------------------------------

    def pod_object(self) -> dict[str, Any]:
        args = self.args
        container: dict[str, Any] = {"name": args.container, "image": IMAGE, "command": args.cmd}
        if args.port:
            container["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in args.port]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": args.name, "namespace": args.namespace, "labels": dict(args.label),
                             "annotations": {"mace.dev/harness-kubelet": str(os.getpid())}},
                "spec": {"nodeName": NODE_NAME, "hostNetwork": args.host_network,
                         "restartPolicy": args.restart_policy, "containers": [container],
                         "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5}}

    def create_pod(self) -> None:
        try:
            created = self.api.create_namespaced_pod(self.args.namespace, self.pod_object())
        except ApiException as exc:
            if exc.status == 404:  # namespace missing: make it, as `kubectl run -n` users expect
                self.api.create_namespace({"metadata": {"name": self.args.namespace}})
                created = self.api.create_namespaced_pod(self.args.namespace, self.pod_object())
            else:
                raise HarnessError(f"cannot create pod {self.args.namespace}/{self.args.name}: "
                                   f"{exc.reason}: {exc.body}") from None
        self.pod_uid = str(created.metadata.uid)
        self.save(uid=self.pod_uid)

    def status(self) -> dict[str, Any]:
        container = self.container
        assert container is not None
        running = container.finished_at is None
        ready = running and self.ready
        if running:
            phase, state = "Running", {"running": {"startedAt": container.started_at}}
        else:
            term = container.terminated()
            phase = "Succeeded" if term["exitCode"] == 0 else "Failed"
            state = {"terminated": term}
        cstatus: dict[str, Any] = {
            "name": self.args.container, "image": IMAGE, "imageID": "", "ready": ready,
            "started": running, "restartCount": self.restart_count, "state": state,
            "containerID": f"containerd://{container.id}"}
        if self.record.get("lastState"):
            cstatus["lastState"] = {"terminated": self.record["lastState"]}
        flag = {True: "True", False: "False"}
        t = now()
        conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": self.start_time},
                      {"type": "Initialized", "status": "True", "lastTransitionTime": self.start_time},
                      {"type": "ContainersReady", "status": flag[ready], "lastTransitionTime": t},
                      {"type": "Ready", "status": flag[ready], "lastTransitionTime": t}]
        return {"status": {"phase": phase, "hostIP": self.node["node_ip"],
                           "hostIPs": [{"ip": self.node["node_ip"]}], "podIP": self.pod_ip,
                           "podIPs": [{"ip": self.pod_ip}], "startTime": self.start_time,
                           "conditions": conditions, "containerStatuses": [cstatus]}}

    def publish(self) -> None:
        """Write the Pod's status (a JSON merge patch: lists are replaced whole); failures are logged."""
        try:
            self.api.patch_namespaced_pod_status(self.args.name, self.args.namespace, self.status(),
                                                 _content_type=MERGE)
        except ApiException as exc:
            if exc.status != 404:
                print(f"kubelet: writing the status of {self.args.namespace}/{self.args.name} failed: "
                      f"{exc.status} {exc.reason}", file=sys.stderr, flush=True)

    # -- containers -------------------------------------------------------------------------------

    def start_container(self) -> None:
        argv: list[str] = self.args.cmd
        self.container = Container(self.pod_uid, argv, self.netns_path, self.log_path, dict(self.args.env))
        proc = self.container.proc
        threading.Thread(target=lambda: self.events.put(("exited", (proc, proc.wait()))), daemon=True).start()
        self.ready = not self.args.ready_url
        self.publish()
        self.save(state="running", pid=proc.pid, containerID=f"containerd://{self.container.id}",
                  restartCount=self.restart_count, exitCode=None, ready=self.ready)

    def restart_container(self) -> None:
        old = self.container
        assert old is not None
        old.stop()
        self.record["lastState"] = old.terminated()
        self.restart_count += 1
        self.start_container()

    def probe_ready(self) -> None:
        if not self.args.ready_url or self.container is None or self.container.finished_at is not None:
            return
        try:
            with urllib.request.urlopen(self.args.ready_url, timeout=1) as response:
                ready = response.status == 200
        except (OSError, urllib.error.URLError):
            ready = False
        if ready != self.ready:
            self.ready = ready
            self.publish()
            self.save(ready=ready)

    # -- following the Pod ------------------------------------------------------------------------

    def follow_pod(self) -> None:
        """Tell the main loop when the Pod gets a deletionTimestamp or disappears."""
        selector = f"metadata.name={self.args.name}"
        while True:
            try:
                events = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_pod, self.args.namespace, field_selector=selector,
                    timeout_seconds=60)
                for event in events:
                    obj = event["object"]
                    if obj.metadata.uid != self.pod_uid:
                        continue
                    if event["type"] == "DELETED" or obj.metadata.deletion_timestamp is not None:
                        self.events.put(("deleted", None))
                        return
            except Exception:  # API server restarting or gone: try again shortly
                time.sleep(1)

    # -- main loop --------------------------------------------------------------------------------

    def run(self) -> int:
        self.claim()
        try:
            self.netns_path = self.network()
            self.create_pod()
            self.start_container()
            signal.signal(signal.SIGHUP, lambda *_: self.events.put(("restart", None)))
            signal.signal(signal.SIGTERM, lambda *_: self.events.put(("stop", None)))
            signal.signal(signal.SIGINT, lambda *_: self.events.put(("stop", None)))
            threading.Thread(target=self.follow_pod, daemon=True).start()
            return self.loop()
        finally:
            self.teardown()

    def loop(self) -> int:
        backoff = 1.0
        while True:
            try:
                kind, value = self.events.get(timeout=READY_PERIOD)
            except queue.Empty:
                self.probe_ready()
                continue
            if kind == "restart":
                if self.container is not None and self.container.finished_at is not None \
                        and self.args.restart_policy == "Never":
                    continue  # the API server refuses to run a terminated container of such a pod again
                self.restart_container()
            elif kind in ("stop", "deleted"):
                return 0
            elif kind == "exited":
                proc, code = value
                if self.container is None or proc is not self.container.proc:
                    continue  # an earlier container, replaced by a restart
                self.container.exited(code)
                if self.args.restart_policy == "Always":
                    time.sleep(backoff)  # a crash-looping container must not spin
                    backoff = min(backoff * 2, 30.0)
                    self.restart_container()
                else:
                    self.container.stop()
                    self.ready = False
                    self.publish()
                    self.save(state="exited", exitCode=self.container.exit_code, ready=False)

    def teardown(self) -> None:
        if self.container is not None:
            self.container.stop()
        if self.pod_uid:
            with contextlib.suppress(Exception):
                self.api.delete_namespaced_pod(self.args.name, self.args.namespace, grace_period_seconds=0,
                                               body=client.V1DeleteOptions(
                                                   grace_period_seconds=0,
                                                   preconditions=client.V1Preconditions(uid=self.pod_uid)))
        if self.netns is not None:
            with contextlib.suppress(HarnessError):
                run(["ip", "netns", "del", self.netns])
        with contextlib.suppress(FileNotFoundError):
            record_path(self.args.namespace, self.args.name).unlink()


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _port(text: str) -> tuple[str, int]:
    name, value = _pair(text)
    return name, int(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--container", default="main")
    parser.add_argument("--host-network", action="store_true")
    parser.add_argument("--label", type=_pair, action="append", default=[])
    parser.add_argument("--env", type=_pair, action="append", default=[])
    parser.add_argument("--port", type=_port, action="append", default=[])
    parser.add_argument("--ready-url")
    parser.add_argument("--restart-policy", choices=("Never", "Always"), default="Never")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("give the container's command after --")
    kubelet = Kubelet(args)
    try:
        return kubelet.run()
    except (HarnessError, ApiException, OSError) as exc:
        kubelet.save(state="failed", error=str(exc))
        print(f"kubelet {args.namespace}/{args.name}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
