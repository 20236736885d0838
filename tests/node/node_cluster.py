"""A real single-node Kubernetes cluster on this machine, entirely inside network namespaces it makes.

    tests/node/cluster up [--no-chart]     build or reuse everything, start the node, install the chart
    tests/node/cluster env                 KUBECONFIG=, MACE_REMOTE_ADDR=, MACE_NODE=, KUBECTL=, HELM=, ...
    tests/node/cluster kubectl ARGS...     the cached kubectl with the node's kubeconfig
    tests/node/cluster helm ARGS...        the cached helm with the node's kubeconfig
    tests/node/cluster exec-node CMD...    CMD in the node's network namespace
    tests/node/cluster logs COMPONENT      etcd, kube-apiserver, ..., kubelet, containerd, agent, operator
    tests/node/cluster status              exit 0 if up, 3 if not
    tests/node/cluster down                remove every process, namespace, mount, cgroup and file it made

The node namespace holds the whole node: etcd, the control plane, containerd, the kubelet and kube-proxy
(started with ``nsenter --net``, so they share the machine's mounts and cgroups), the pod bridge ``cni0``
and the outer device ``eth0``, a veth to a "remote" namespace (with UDP and TCP echo servers). The root
namespace gains one listening socket on loopback (a forwarder to the API server) and nothing else.
Exit codes: 0 done; 1 failed (the message says what); 2 bad usage; 3 (status) not up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import node_configs as cfg  # noqa: E402
from common import HarnessError, Proc, locked, run, spawn, wait_for  # noqa: E402
from control_plane import free_port  # noqa: E402

STATE_DIR = Path(os.environ.get("MACE_NODE_DIR", "/var/lib/mace-node"))
CACHE = Path(os.environ.get("MACE_TOOLS_CACHE", "/var/cache/mace-tools"))
SOURCE = Path(os.environ.get("MACE_NODE_SOURCE", REPO))
"""The checkout whose images and chart the node runs (default: this one; e.g. `git archive HEAD` unpacked,
to test one commit while the working tree changes)."""
CONTAINERD_ROOT = CACHE / "node-containerd"
"""containerd's root (image content and snapshots) outlives ``down`` like the tools: a warm ``up`` imports
only images that changed."""
STATE_FILE = STATE_DIR / "state.json"
LOGS = STATE_DIR / "logs"
PKI = STATE_DIR / "pki"
KUBECONFIG = STATE_DIR / "kubeconfig"
NODE_KUBECONFIG = STATE_DIR / "node.kubeconfig"
SOCKET = STATE_DIR / "containerd.sock"
LOCK = CACHE / ".node.lock"
NETNS_PATH = Path("/run/netns")
CGROUP_FS = Path("/sys/fs/cgroup")
IMAGES = ("pause", "lab", "agent", "operator")
SYSTEM_NAMESPACE = "mace-system"
COMPONENT_SELECTORS = {"agent": "app.kubernetes.io/component=agent",
                       "operator": "app.kubernetes.io/component=operator"}
UP_TIMEOUT_S = 180.0


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[node {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- state --------------------------------------------------------------------------------------------

def load_state() -> dict[str, Any]:
    """What ``up`` recorded ({} if nothing is up)."""
    try:
        return dict(json.loads(STATE_FILE.read_text()))
    except FileNotFoundError:
        return {}


def save(state: dict[str, Any]) -> None:
    """Write the state atomically (after every step of ``up``: a failure half-way is still undone)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE_FILE)


def add_proc(state: dict[str, Any], role: str, proc: Proc) -> None:
    state.setdefault("procs", {})[role] = proc.as_json()
    save(state)


def procs(state: dict[str, Any]) -> dict[str, Proc]:
    return {role: Proc(**fields) for role, fields in state.get("procs", {}).items()}


def is_up(state: dict[str, Any]) -> bool:
    return bool(state.get("ready")) and all(p.alive() for p in procs(state).values())


# -- helpers ------------------------------------------------------------------------------------------

def in_node(*argv: str) -> list[str]:
    """``argv`` run in the node's network namespace (nsenter: /sys and the mounts stay the machine's)."""
    return ["nsenter", f"--net={NETNS_PATH / cfg.NODE_NETNS}", "--", *argv]


def in_remote(*argv: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_PATH / cfg.REMOTE_NETNS}", "--", *argv]


def start(state: dict[str, Any], role: str, argv: list[str]) -> Proc:
    """Start a long-running process of the node, log to logs/ROLE.log, record it."""
    proc = spawn(role, argv, LOGS / f"{role}.log")
    add_proc(state, role, proc)
    return proc


def kubectl(state: dict[str, Any], *args: str, check: bool = True, timeout: float = 60,
            input_text: str | None = None) -> str:
    return run([state["tools"]["KUBECTL"], "--kubeconfig", str(KUBECONFIG), *args], check=check,
               timeout=timeout, input_text=input_text)


def tool_env() -> dict[str, str]:
    """KEY=path of every cached tool (tests/harness/build-tools.sh --node builds what is missing)."""
    out = run(["bash", str(REPO / "tests" / "harness" / "build-tools.sh"), "--node"], timeout=3600)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def build_images() -> dict[str, str]:
    """Build or reuse the node's four images (SOURCE's tests/images/build.sh); reference by image name."""
    out = run([str(SOURCE / "tests" / "images" / "build.sh"), *IMAGES], timeout=3600)
    refs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: refs[f"{name.upper()}_IMAGE"] for name in IMAGES}


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def cgroup_hierarchies() -> list[Path]:
    """The mount point of every cgroup hierarchy (v1 controllers and the v2 tree)."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return [Path(f[1]) for f in (line.split() for line in mounts) if f[2] in ("cgroup", "cgroup2")]


def mounts_under(prefixes: list[Path]) -> list[str]:
    """Mount points at or below any of ``prefixes``, deepest first."""
    texts = [str(p) for p in prefixes]
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    ours = {m for m in points if any(m == t or m.startswith(t + "/") for t in texts)}
    return sorted(ours, key=lambda m: -m.count("/"))


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 from inside the node namespace."""
    code = f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"
    done = subprocess.run(in_node(sys.executable, "-c", code), capture_output=True, check=False)
    return done.returncode == 0


# -- up -------------------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    with locked(LOCK):
        state = load_state()
        if is_up(state):
            log("already up")
            if not args.no_chart and not state.get("chart"):
                install_chart(state)
            print_env(state)
            return 0
        if state:
            log("removing what a previous node left")
            teardown(state)
        state = {"started": datetime.now(UTC).isoformat()}
        save(state)
        try:
            bring_up(state, chart=not args.no_chart)
        except BaseException:
            log(f"up failed; the logs were in {LOGS} (tails follow); removing what was made")
            for proc in procs(state).values():
                with contextlib.suppress(OSError):
                    tail = Path(proc.log).read_text(errors="replace").splitlines()[-8:]
                    print(f"--- {proc.name}\n" + "\n".join(tail), file=sys.stderr)
            teardown(load_state())
            raise
    print_env(state)
    return 0


def bring_up(state: dict[str, Any], chart: bool) -> None:
    began = time.monotonic()
    log("building or finding the tools and images (cached under /var/cache/mace-tools)")
    state["tools"] = tool_env()
    state["images"] = build_images()
    state["sysctls"] = {name: read_sysctl(name) for name in cfg.KUBELET_SYSCTLS}
    state["outside"] = [p for p in cfg.OUTSIDE_PATHS if not Path(p).exists()]
    state["netns_before"] = sorted(p.name for p in NETNS_PATH.glob("cni-*"))
    save(state)
    log(f"tools and images ready after {time.monotonic() - began:.1f}s")
    for sub in ("logs", "cni", "etcd"):
        (STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    make_network(state)
    make_cgroups(state)
    from pki import make_pki

    make_pki(PKI)
    write_kubeconfigs(state)
    start_control_plane(state)
    start_containerd(state)
    import_images(state)
    start_kubelet(state)
    start_echo_servers(state)
    log(f"node Ready after {time.monotonic() - began:.1f}s")
    if chart:
        install_chart(state)
    state["ready"] = True
    save(state)
    log(f"up in {time.monotonic() - began:.1f}s")


def make_network(state: dict[str, Any]) -> None:
    """The node and remote namespaces and the uplink veth between them (the node's outer device)."""
    state["netns"] = [cfg.NODE_NETNS, cfg.REMOTE_NETNS]
    save(state)
    for ns in state["netns"]:
        if (NETNS_PATH / ns).exists():
            raise HarnessError(f"network namespace {ns} exists already (another node? `down` first)")
        run(["ip", "netns", "add", ns])
    node, remote = cfg.NODE_NETNS, cfg.REMOTE_NETNS
    run(["ip", "-n", node, "link", "add", cfg.OUTER_DEVICE, "type", "veth", "peer", "name", "eth0",
         "netns", remote])
    for ns, addr in ((node, cfg.NODE_ADDR), (remote, cfg.REMOTE_ADDR)):
        run(["ip", "-n", ns, "addr", "add", f"{addr}/{cfg.UPLINK_PREFIX}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", node, "route", "add", "default", "via", cfg.REMOTE_ADDR])
    run(["ip", "-n", remote, "route", "add", cfg.CLUSTER_CIDR, "via", cfg.NODE_ADDR])
    run(in_node("sysctl", "-qw", "net.ipv4.ip_forward=1"))
    (STATE_DIR / "resolv.conf").write_text("# no DNS on the test node\nnameserver 127.0.0.1\n")


def make_cgroups(state: dict[str, Any]) -> None:
    """CGROUP_ROOT in every hierarchy (cpuset needs its cpus and mems copied in before use)."""
    state["cgroups"] = [str(h) for h in cgroup_hierarchies()]
    save(state)
    for hierarchy in state["cgroups"]:
        path = Path(hierarchy) / cfg.CGROUP_ROOT.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((Path(hierarchy) / name).read_text())


def write_kubeconfigs(state: dict[str, Any]) -> None:
    """The admin (client certificate, system:masters) twice: inside the node (the components) and from
    the root namespace through the forwarder (people and tests)."""
    from control_plane import write_kubeconfig

    user = {"client-certificate": str(PKI / "admin.crt"), "client-key": str(PKI / "admin.key")}
    state["api_port"] = free_port()
    save(state)
    write_kubeconfig(NODE_KUBECONFIG, PKI, cfg.API_PORT, user, "mace-node-admin")
    write_kubeconfig(KUBECONFIG, PKI, state["api_port"], user, "mace-node-admin")


def start_control_plane(state: dict[str, Any]) -> None:
    tools = state["tools"]
    start(state, "etcd", in_node(
        tools["ETCD"], "--name", "mace-node", "--data-dir", str(STATE_DIR / "etcd"),
        "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
        "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
        "--initial-cluster", "mace-node=http://127.0.0.1:2380", "--listen-metrics-urls", "",
        "--unsafe-no-fsync", "--log-level", "warn"))
    wait_for("etcd", lambda: http_ok("http://127.0.0.1:2379/health"), 30, interval=0.2)
    start(state, "kube-apiserver", in_node(
        tools["KUBE_APISERVER"], "--etcd-servers", "http://127.0.0.1:2379",
        "--bind-address", "0.0.0.0", "--advertise-address", cfg.NODE_ADDR, "--secure-port", str(cfg.API_PORT),
        "--tls-cert-file", str(PKI / "apiserver.crt"), "--tls-private-key-file", str(PKI / "apiserver.key"),
        "--client-ca-file", str(PKI / "ca.crt"), "--cert-dir", str(PKI),
        "--kubelet-client-certificate", str(PKI / "admin.crt"),
        "--kubelet-client-key", str(PKI / "admin.key"),
        "--kubelet-preferred-address-types", "InternalIP",
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", str(PKI / "sa.pub"),
        "--service-account-signing-key-file", str(PKI / "sa.key"),
        "--service-cluster-ip-range", cfg.SERVICE_CIDR, "--authorization-mode", "Node,RBAC",
        "--allow-privileged=true", "--profiling=false", "--v", "1"))
    # The root namespace reaches the API server through a forwarder whose listening socket is created
    # in this process's namespace (it opens our /proc/PID/ns/net while we wait for it).
    start(state, "forwarder", in_node(
        sys.executable, str(REPO / "tests" / "harness" / "forward.py"),
        "--netns", f"/proc/{os.getpid()}/ns/net", "--listen", f"127.0.0.1:{state['api_port']}",
        "--connect", f"127.0.0.1:{cfg.API_PORT}"))
    wait_for("kube-apiserver /readyz",
             lambda: kubectl(state, "get", "--raw", "/readyz", check=False, timeout=5).strip() == "ok", 120,
             interval=0.5)
    common = ["--kubeconfig", str(NODE_KUBECONFIG), "--leader-elect=false", "--bind-address", "127.0.0.1"]
    start(state, "kube-controller-manager", in_node(
        tools["KUBE_CONTROLLER_MANAGER"], *common, "--service-account-private-key-file", str(PKI / "sa.key"),
        "--root-ca-file", str(PKI / "ca.crt"), "--use-service-account-credentials=true",
        "--cluster-cidr", cfg.CLUSTER_CIDR, "--service-cluster-ip-range", cfg.SERVICE_CIDR, "--v", "1"))
    start(state, "kube-scheduler", in_node(tools["KUBE_SCHEDULER"], *common))


def start_containerd(state: dict[str, Any]) -> None:
    CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "cni" / "10-mace-node.conflist").write_text(cfg.cni_conflist(STATE_DIR))
    config = STATE_DIR / "containerd.toml"
    config.write_text(cfg.containerd_toml(STATE_DIR, CONTAINERD_ROOT, SOCKET))
    proc = start(state, "containerd", in_node("containerd", "--config", str(config)))

    def answers() -> bool:
        if not proc.alive():
            raise HarnessError(f"containerd exited; see {proc.log}")
        return SOCKET.is_socket() and subprocess.run(ctr("version"), capture_output=True).returncode == 0

    wait_for("containerd", answers, 30, interval=0.2)


def ctr(*args: str) -> list[str]:
    return ["ctr", "--address", str(SOCKET), "--namespace", "k8s.io", *args]


def import_images(state: dict[str, Any]) -> None:
    """Import into containerd's k8s.io namespace each image whose buildah ID differs from the last import."""
    marks = CONTAINERD_ROOT / "mace-imported"
    marks.mkdir(exist_ok=True)
    for name, ref in state["images"].items():
        image_id = run(["buildah", "images", "--quiet", "--no-trunc", ref]).split()[0]
        mark = marks / name
        listed = run(ctr("images", "list", "--quiet"), check=False).split()
        if mark.is_file() and mark.read_text() == image_id and ref in listed:
            continue
        began = time.monotonic()
        archive = STATE_DIR / f"{name}.tar"
        run(["buildah", "push", "--quiet", ref, f"oci-archive:{archive}:{ref}"], timeout=600)
        run(ctr("images", "import", str(archive)), timeout=600)
        archive.unlink()
        mark.write_text(image_id)
        log(f"imported {ref} in {time.monotonic() - began:.1f}s")


def start_kubelet(state: dict[str, Any]) -> None:
    tools = state["tools"]
    config = STATE_DIR / "kubelet.yaml"
    config.write_text(cfg.kubelet_yaml(STATE_DIR, SOCKET, PKI / "ca.crt"))
    start(state, "kubelet", in_node(
        tools["KUBELET"], "--config", str(config), "--kubeconfig", str(NODE_KUBECONFIG),
        "--root-dir", str(STATE_DIR / "kubelet"), "--node-ip", cfg.NODE_ADDR,
        "--hostname-override", cfg.NODE_NAME, "--v", "1"))
    proxy = STATE_DIR / "kube-proxy.yaml"
    proxy.write_text(cfg.kube_proxy_yaml(NODE_KUBECONFIG))
    start(state, "kube-proxy", in_node(tools["KUBE_PROXY"], "--config", str(proxy)))

    def ready() -> bool:
        for proc in procs(state).values():
            if not proc.alive():
                raise HarnessError(f"{proc.name} exited; see {proc.log}")
        out = kubectl(state, "get", "node", cfg.NODE_NAME, "-o",
                      "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False, timeout=10)
        return out.strip() == "True"

    wait_for(f"node {cfg.NODE_NAME} Ready", ready, UP_TIMEOUT_S, interval=0.5)
    wait_for("the default ServiceAccount", lambda: kubectl(
        state, "get", "serviceaccount", "default", "-o", "name", check=False).strip(), 60, interval=0.5)


def start_echo_servers(state: dict[str, Any]) -> None:
    """UDP and TCP echo servers in the remote namespace, for workloads that measure both directions."""
    lab = str(HERE / "image" / "mace-lab")
    start(state, "remote-udp-echo", in_remote("/usr/bin/python3", lab, "udp-echo", "--port",
                                              str(cfg.REMOTE_UDP_PORT)))
    start(state, "remote-tcp-echo", in_remote("/usr/bin/python3", lab, "tcp-echo", "--port",
                                              str(cfg.REMOTE_TCP_PORT)))


def install_chart(state: dict[str, Any]) -> None:
    """``helm install`` as a user would (only the image registry and pull policy set); wait for the pods."""
    began = time.monotonic()
    registry, tag = image_values(state)
    run([state["tools"]["HELM"], "--kubeconfig", str(KUBECONFIG), "install", "mace",
         str(SOURCE / "helm" / "mace"), "-n", SYSTEM_NAMESPACE, "--create-namespace",
         "--set", f"image.registry={registry}", "--set", f"image.tag={tag}",
         "--set", "image.pullPolicy=Never"], timeout=120)
    state["chart"] = True
    save(state)
    for component, selector in COMPONENT_SELECTORS.items():
        try:
            wait_for(f"the {component} pod Ready", lambda s=selector: pods_ready(state, s), UP_TIMEOUT_S,
                     interval=0.5)
        except HarnessError:
            logs = kubectl(state, "logs", "-n", SYSTEM_NAMESPACE, "-l", selector, "--tail=30", "--previous",
                           check=False) or kubectl(state, "logs", "-n", SYSTEM_NAMESPACE, "-l", selector,
                                                   "--tail=30", check=False)
            print(f"--- {component} pod log\n{logs}", file=sys.stderr)
            raise
        log(f"{component} Ready {time.monotonic() - began:.1f}s after helm install")


def pods_ready(state: dict[str, Any], selector: str) -> bool:
    """Whether pods match ``selector`` in mace-system and all of them are Ready."""
    out = kubectl(state, "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", selector, "-o", "json", check=False)
    try:
        items = json.loads(out)["items"]
    except (ValueError, KeyError):
        return False
    return bool(items) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in i.get("status", {}).get("conditions", []))
        for i in items if not i["metadata"].get("deletionTimestamp"))


# -- down -----------------------------------------------------------------------------------------------

def cmd_down(_: argparse.Namespace) -> int:
    with locked(LOCK):
        state = load_state()
        if not state and not STATE_DIR.exists():
            log("nothing to remove")
            return 0
        began = time.monotonic()
        teardown(state)
        log(f"down in {time.monotonic() - began:.1f}s")
    return 0


def teardown(state: dict[str, Any]) -> None:
    """Undo ``up`` in reverse, whatever state it reached; every step runs even if one before failed."""
    running = procs(state)
    problems: list[str] = []

    def step(what: str, action: Any) -> None:
        try:
            action()
        except Exception as error:  # keep going, report at the end
            problems.append(f"{what}: {error}")

    def stop(*roles: str) -> None:
        for role in roles:
            if role in running:
                running[role].stop(grace=10)

    if "kube-apiserver" in running and running["kube-apiserver"].alive() and "kubelet" in running:
        stop("kube-controller-manager")  # nothing re-creates the pods deleted next
        step("deleting the pods", lambda: delete_pods(state))
    stop("remote-udp-echo", "remote-tcp-echo", "kube-proxy", "kubelet", "kube-scheduler",
         "kube-controller-manager")
    step("removing containers", remove_containers)
    stop("containerd")
    step("stopping shims", stop_shims)
    stop("forwarder", "kube-apiserver", "etcd")  # the API server before etcd
    step("unmounting", lambda: unmount(state))
    step("removing namespaces", lambda: remove_netns(state))
    step("removing cgroups", lambda: remove_cgroups(state))
    for name, value in state.get("sysctls", {}).items():
        step(f"restoring {name}", lambda n=name, v=value: read_sysctl(n) != v and write_sysctl(n, v))
    for path in state.get("outside", []):
        step(f"removing {path}", lambda p=path: shutil.rmtree(p) if Path(p).exists() else None)
    step(f"removing {STATE_DIR}", lambda: shutil.rmtree(STATE_DIR) if STATE_DIR.exists() else None)
    if problems:
        raise HarnessError("down left something behind: " + "; ".join(problems))


def delete_pods(state: dict[str, Any]) -> None:
    kubectl(state, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false",
            check=False, timeout=30)
    with contextlib.suppress(HarnessError):
        wait_for("the kubelet to stop every pod", lambda: not kubectl(
            state, "get", "pods", "-A", "-o", "name", check=False, timeout=10).strip(), 40, interval=0.5)


def remove_containers() -> None:
    if not SOCKET.is_socket():
        return
    for task in run(ctr("tasks", "list", "--quiet"), check=False).split():
        run(ctr("tasks", "kill", "--signal", "SIGKILL", task), check=False)
        run(ctr("tasks", "delete", "--force", task), check=False)
    for container in run(ctr("containers", "list", "--quiet"), check=False).split():
        run(ctr("containers", "delete", container), check=False)


def stop_shims() -> None:
    """containerd-shim-runc-v2 processes serving this node's containerd (matched by their -address)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(SOCKET).encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def unmount(state: dict[str, Any]) -> None:
    """Whatever is still mounted below the node's directories, and the pod namespaces CNI left."""
    new_netns = [NETNS_PATH / p.name for p in NETNS_PATH.glob("cni-*")
                 if p.name not in state.get("netns_before", [])]
    for point in mounts_under([STATE_DIR, CONTAINERD_ROOT, Path("/run/containerd"), *new_netns]):
        run(["umount", "-l", point], check=False)
    for path in new_netns:
        path.unlink(missing_ok=True)


def remove_netns(state: dict[str, Any]) -> None:
    for ns in state.get("netns", []):
        if (NETNS_PATH / ns).exists():
            run(["ip", "netns", "del", ns])


def remove_cgroups(state: dict[str, Any]) -> None:
    """CGROUP_ROOT and everything the kubelet and runc made under it, deepest first; a process still in
    one of them (there should be none) is killed first."""
    for hierarchy in state.get("cgroups", []):
        top = Path(hierarchy) / cfg.CGROUP_ROOT.lstrip("/")
        if not top.is_dir():
            continue
        dirs = [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]
        for directory in dirs:
            procs_file = directory / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs_file.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            wait_for(f"{directory} to empty", lambda d=directory: not (d / "cgroup.procs").exists()
                     or not (d / "cgroup.procs").read_text().strip(), 10)
            directory.rmdir()


# -- env, tools, logs -------------------------------------------------------------------------------------

def image_values(state: dict[str, Any]) -> tuple[str, str]:
    """The chart's image.registry and image.tag for the images built here."""
    ref = state["images"]["agent"]
    return ref.rsplit("/", 1)[0], ref.rsplit(":", 1)[1]


def env_lines(state: dict[str, Any]) -> list[str]:
    tools = state["tools"]
    registry, tag = image_values(state)
    return [f"KUBECONFIG={KUBECONFIG}", f"MACE_REMOTE_ADDR={cfg.REMOTE_ADDR}", f"MACE_NODE={cfg.NODE_NAME}",
            f"KUBECTL={tools['KUBECTL']}", f"HELM={tools['HELM']}", f"MACE_NODE_ADDR={cfg.NODE_ADDR}",
            f"MACE_NODE_NETNS={cfg.NODE_NETNS}", f"MACE_REMOTE_NETNS={cfg.REMOTE_NETNS}",
            f"MACE_REMOTE_UDP_PORT={cfg.REMOTE_UDP_PORT}", f"MACE_REMOTE_TCP_PORT={cfg.REMOTE_TCP_PORT}",
            f"MACE_LAB_IMAGE={state['images']['lab']}", f"MACE_IMAGE_REGISTRY={registry}",
            f"MACE_IMAGE_TAG={tag}"]


def print_env(state: dict[str, Any]) -> None:
    print("\n".join(env_lines(state)))


def need_up() -> dict[str, Any]:
    state = load_state()
    if not is_up(state):
        raise HarnessError("the node is not up (sudo tests/node/cluster up)")
    return state


def exec_tool(tool: str, args: list[str]) -> int:
    state = need_up()
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    os.execv(state["tools"][tool], [state["tools"][tool], *args])


def cmd_logs(args: argparse.Namespace) -> int:
    state = load_state()
    if args.component in COMPONENT_SELECTORS:
        selector = COMPONENT_SELECTORS[args.component]
        return exec_tool("KUBECTL", ["logs", "-n", SYSTEM_NAMESPACE, "-l", selector, "--tail=-1", "--prefix"])
    known = sorted(procs(state))
    if args.component not in known:
        names = ", ".join([*known, *COMPONENT_SELECTORS])
        raise HarnessError(f"no component {args.component!r}; known: {names}")
    sys.stdout.write((LOGS / f"{args.component}.log").read_text(errors="replace"))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tests/node/cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the node (and install the chart)")
    up.add_argument("--no-chart", action="store_true", help="stop before installing the chart")
    sub.add_parser("env", help="print KEY=VALUE lines for the node")
    sub.add_parser("status", help="exit 0 if up, 3 if not")
    for name in ("kubectl", "helm", "exec-node"):
        tool = sub.add_parser(name, help=f"run {name} against the node")
        tool.add_argument("args", nargs=argparse.REMAINDER)
    logs = sub.add_parser("logs", help="print a component's log")
    logs.add_argument("component")
    sub.add_parser("down", help="remove everything up made")
    passthrough = argv[0] if argv and argv[0] in ("kubectl", "helm", "exec-node") else None
    args = parser.parse_args(argv[:1] if passthrough else argv)
    if passthrough:
        args.args = argv[1:]  # every word after the command is the tool's, options too
    try:
        if args.command in ("up", "down", "exec-node") and os.geteuid() != 0:
            raise HarnessError(f"{args.command} needs root (namespaces, cgroups, containerd)")
        if args.command == "up":
            return cmd_up(args)
        if args.command == "down":
            return cmd_down(args)
        if args.command == "env":
            print_env(need_up())
            return 0
        if args.command == "status":
            return 0 if is_up(load_state()) else 3
        if args.command in ("kubectl", "helm"):
            return exec_tool(args.command.upper(), args.args)
        if args.command == "exec-node":
            need_up()
            if not args.args:
                parser.error("exec-node needs a command")
            os.execvp("nsenter", in_node(*args.args))
        return cmd_logs(args)
    except HarnessError as error:
        print(f"tests/node/cluster: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
