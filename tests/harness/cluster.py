"""The local cluster harness: a real kube-apiserver, the operator and one agent on a namespace "node".

    tests/harness/cluster up [--no-operator] [--no-agent]
    tests/harness/cluster pod NAME [--namespace NS] [--restart | --delete] [-- CMD...]
    tests/harness/cluster kubectl ARGS...
    tests/harness/cluster env
    tests/harness/cluster status
    tests/harness/cluster restart agent|operator
    tests/harness/cluster logs etcd|kube-apiserver|operator|agent|forwarder|POD
    tests/harness/cluster down

Exit codes: 0 done; 1 something failed (the message says what); 2 bad usage; 3 (status) not up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import control_plane
import node as node_mod
from common import (
    HARNESS_DIR,
    KUBECONFIG,
    LOGS_DIR,
    PODS_DIR,
    PREFIX,
    HarnessError,
    Proc,
    load_state,
    locked,
    log,
    python,
    record,
    record_proc,
    recorded_procs,
    run,
    save_state,
    spawn,
    wait_for,
)
from kubelet import read_record, record_path

HERE = Path(__file__).resolve().parent
AGENT_PORT = 9464
AGENT_POD = "mace-agent-harness"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SHM = Path("/dev/shm")


def _bin(name: str) -> str:
    """A console script of the project's venv (next to the interpreter)."""
    return str(Path(python()).parent / name)


def _up(state: dict[str, Any]) -> bool:
    procs = recorded_procs(state)
    return bool(procs) and all(p.alive() for p in procs.values()) and bool(state.get("ready"))


# -- up ---------------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    with locked():
        state = load_state()
        if _up(state):
            log("already up")
            print_env(state)
            return 0
        if state:
            log("cleaning up what a previous harness left")
            teardown(state)
        state = {"prefix": PREFIX, "started": datetime.now(UTC).isoformat()}
        save_state(state)
        try:
            bring_up(state, operator=not args.no_operator, agent=not args.no_agent)
        except BaseException:
            log(f"up failed; logs are in {LOGS_DIR}; removing what was made")
            teardown(load_state())
            raise
    print_env(state)
    return 0


def bring_up(state: dict[str, Any], operator: bool, agent: bool) -> None:
    began = time.monotonic()
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    log("building/finding tools (cached under /var/cache/mace-tools)")
    tools = control_plane.build_tools()
    record(state, "tools", tools)
    pki = HARNESS_DIR / "pki"
    from pki import make_pki

    make_pki(pki)
    ports = {"etcd": control_plane.free_port(), "etcd_peer": control_plane.free_port(),
             "apiserver": control_plane.free_port()}
    record(state, "ports", ports)
    data = SHM / f"{PREFIX}-etcd" if SHM.is_dir() else HARNESS_DIR / "etcd"
    record(state, "etcd_data", str(data))
    etcd = control_plane.start_etcd(tools["ETCD"], data, ports["etcd"], ports["etcd_peer"])
    record_proc(state, "etcd", etcd)
    apiserver = control_plane.start_apiserver(tools["KUBE_APISERVER"], pki, ports["etcd"], ports["apiserver"])
    record_proc(state, "kube-apiserver", apiserver)
    control_plane.write_admin_kubeconfig(pki, ports["apiserver"])
    log(f"kube-apiserver ready on 127.0.0.1:{ports['apiserver']} after {time.monotonic() - began:.1f}s")
    control_plane.install(tools, pki, ports["apiserver"])
    log("building the node (namespaces, bridge, uplink, root-link veth)")
    node = node_mod.build_node(state)
    record_proc(state, "forwarder", spawn("forwarder", [
        python(), str(HERE / "forward.py"), "--netns", f"/run/netns/{node['netns']}",
        "--listen", f"127.0.0.1:{ports['apiserver']}", "--connect", f"127.0.0.1:{ports['apiserver']}"],
        LOGS_DIR / "forwarder.log"))
    register_node(node)
    if agent:
        start_agent(state)
    if operator:
        start_operator(state)
    record(state, "ready", True)
    log(f"up in {time.monotonic() - began:.1f}s")


def register_node(node: dict[str, Any]) -> None:
    from kubernetes import client, config

    api_client = config.new_client_from_config(str(KUBECONFIG))  # type: ignore[no-untyped-call]
    api: Any = client.CoreV1Api(api_client)
    api.create_node(node_mod.node_object(node))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.patch_node_status(node_mod.NODE_NAME, node_mod.node_status(node, now),
                          _content_type="application/merge-patch+json")


def agent_command(state: dict[str, Any]) -> list[str]:
    """The ``mace-agent serve`` command line of the harness's agent."""
    username = control_plane.service_account_username(control_plane.OPERATOR_SA)
    serve = ["serve", "--node", node_mod.NODE_NAME,
             "--kubeconfig", str(HARNESS_DIR / f"{control_plane.AGENT_SA}.kubeconfig"),
             "--listen", f"0.0.0.0:{AGENT_PORT}", "--operator-username", username]
    return [_bin("mace-agent"), *serve, *str(state.get("agent_args", "")).split()]


def start_agent(state: dict[str, Any]) -> None:
    """The agent as a host-network pod on the node (a kubelet keeps it running and its Pod Ready)."""
    node = state["node"]
    argv = [python(), str(HERE / "kubelet.py"), "--name", AGENT_POD, "--namespace",
            control_plane.SYSTEM_NAMESPACE, "--container", "agent", "--host-network",
            "--label", "app.kubernetes.io/name=mace-agent", "--label", "app.kubernetes.io/component=agent",
            "--port", f"http={AGENT_PORT}", "--ready-url", f"http://{node['node_ip']}:{AGENT_PORT}/readyz",
            "--restart-policy", "Always", "--", *agent_command(state)]
    log_path = LOGS_DIR / f"kubelet-{control_plane.SYSTEM_NAMESPACE}_{AGENT_POD}.log"
    kubelet = spawn("agent-kubelet", argv, log_path)
    record_proc(state, "agent-kubelet", kubelet)
    wait_pod_ready(control_plane.SYSTEM_NAMESPACE, AGENT_POD, kubelet, ready=True, timeout=120)
    log("agent ready")


def start_operator(state: dict[str, Any]) -> None:
    """The operator in the root namespace as the mace-operator ServiceAccount, its /metrics on a port kept
    across restarts (``MACE_OPERATOR_METRICS_URL``); waits for its liveness."""
    kubeconfig = str(HARNESS_DIR / f"{control_plane.OPERATOR_SA}.kubeconfig")
    liveness = f"http://127.0.0.1:{control_plane.free_port()}/healthz"
    ports = dict(state.get("ports") or {})
    if "operator_metrics" not in ports:
        ports["operator_metrics"] = control_plane.free_port()
        record(state, "ports", ports)
    proc = spawn("operator", [_bin("mace-operator"), "--kubeconfig", kubeconfig, "--all-namespaces",
                              "--agent-token-file", str(HARNESS_DIR / f"{control_plane.OPERATOR_SA}.token"),
                              "--liveness", liveness, "--metrics", f"127.0.0.1:{ports['operator_metrics']}"],
                 LOGS_DIR / "operator.log")
    record_proc(state, "operator", proc)

    def live() -> bool:
        if not proc.alive():
            raise HarnessError(f"the operator exited; see {proc.log}")
        try:
            with urllib.request.urlopen(liveness, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for("the operator's liveness probe", live, 60)
    log("operator ready")


def wait_pod_ready(namespace: str, name: str, kubelet: Proc, ready: bool, timeout: float) -> dict[str, Any]:
    """Wait until the pod's kubelet reports the container running (and Ready if asked)."""

    def check() -> dict[str, Any] | None:
        rec = read_record(namespace, name)
        if rec is not None and rec.get("state") == "failed":
            raise HarnessError(f"pod {namespace}/{name}: {rec.get('error')}")
        if not kubelet.alive():
            raise HarnessError(f"the kubelet of pod {namespace}/{name} exited; see {kubelet.log}")
        if rec is not None and rec.get("state") in ("running", "exited") and (rec.get("ready") or not ready):
            return rec
        return None

    what = f"pod {namespace}/{name} to start{' and be Ready' if ready else ''} (its log: " \
           f"{LOGS_DIR / 'pods' / f'{namespace}_{name}.log'})"
    return dict(wait_for(what, check, timeout))


# -- pod ----------------------------------------------------------------------------------------------

def cmd_pod(args: argparse.Namespace) -> int:
    state = load_state()
    if not state.get("ready"):
        raise HarnessError("the harness is not up; run `tests/harness/cluster up` first")
    for what, value in (("pod name", args.name), ("namespace", args.namespace)):
        if not DNS_LABEL.match(value):
            raise HarnessError(f"{what} {value!r} is not a DNS label (lower-case letters, digits, '-')")
    existing = read_record(args.namespace, args.name)
    kubelet = Proc(**existing["supervisor"]) if existing else None
    if args.restart or args.delete:
        if existing is None or kubelet is None or not kubelet.alive():
            raise HarnessError(f"no harness pod {args.namespace}/{args.name} is running")
        if args.delete:
            kubelet.stop(grace=30)
            print(json.dumps({"name": args.name, "namespace": args.namespace, "deleted": True}))
            return 0
        if existing.get("state") == "exited":
            raise HarnessError(f"pod {args.namespace}/{args.name} has terminated and its restartPolicy is "
                               "Never; --delete it and run it again")
        before = existing.get("containerID")
        kubelet.signal(signal.SIGHUP)

        def restarted() -> dict[str, Any] | None:
            rec = read_record(args.namespace, args.name)
            if rec and rec.get("containerID") != before and rec.get("state") in ("running", "exited"):
                return rec
            return None

        print(json.dumps(_public(wait_for("the container to restart", restarted, 30))))
        return 0
    if not args.cmd:
        raise HarnessError("give the pod's command after --, e.g. `cluster pod ping1 -- ping 10.213.0.2`")
    if existing is not None and kubelet is not None and kubelet.alive():
        raise HarnessError(f"pod {args.namespace}/{args.name} already runs; --delete it first")
    record_path(args.namespace, args.name).unlink(missing_ok=True)  # left by a kubelet that failed
    argv = [python(), str(HERE / "kubelet.py"), "--name", args.name, "--namespace", args.namespace,
            "--container", args.container]
    for label in args.label:
        argv += ["--label", label]
    argv += ["--restart-policy", args.restart_policy]
    proc = spawn(f"kubelet {args.namespace}/{args.name}", [*argv, "--", *args.cmd],
                 LOGS_DIR / f"kubelet-{args.namespace}_{args.name}.log")
    print(json.dumps(_public(wait_pod_ready(args.namespace, args.name, proc, ready=False, timeout=60))))
    return 0


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "namespace", "state", "pid", "containerID", "podIP", "podIPv6", "netns", "hostVeth",
            "restartCount", "exitCode", "log")
    return {k: rec.get(k) for k in keys}


# -- kubectl, env, status, logs, restart ----------------------------------------------------------------

def cmd_kubectl(args: argparse.Namespace) -> int:
    state = load_state()
    if not state.get("tools"):
        raise HarnessError("the harness is not up; run `tests/harness/cluster up` first")
    os.execv(state["tools"]["KUBECTL"], [state["tools"]["KUBECTL"], "--kubeconfig", str(KUBECONFIG),
                                         *args.args])


def print_env(state: dict[str, Any]) -> None:
    node = state.get("node") or {}
    operator_metrics = (state.get("ports") or {}).get("operator_metrics", "")
    values = {"KUBECONFIG": str(KUBECONFIG), "MACE_REMOTE_ADDR": node.get("remote_ipv4", ""),
              "MACE_REMOTE_ADDR6": node.get("remote_ipv6", ""), "MACE_NODE": node_mod.NODE_NAME,
              "MACE_AGENT_URL": f"http://{node.get('node_ip', '')}:{AGENT_PORT}",
              "MACE_OPERATOR_METRICS_URL": f"http://127.0.0.1:{operator_metrics}" if operator_metrics else "",
              "MACE_OPERATOR_TOKEN_FILE": str(HARNESS_DIR / f"{control_plane.OPERATOR_SA}.token"),
              "MACE_NODE_NETNS": node.get("netns", ""),
              "KUBECTL": (state.get("tools") or {}).get("KUBECTL", "")}
    for key, value in values.items():
        print(f"{key}={value}")


def cmd_env(_args: argparse.Namespace) -> int:
    state = load_state()
    if not state.get("ready"):
        raise HarnessError("the harness is not up; run `tests/harness/cluster up` first")
    print_env(state)
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    state = load_state()
    procs = recorded_procs(state)
    for role, proc in procs.items():
        print(f"{role:16} pid {proc.pid:7} {'running' if proc.alive() else 'GONE'}")
    for path in sorted(PODS_DIR.glob("*.json")) if PODS_DIR.is_dir() else []:
        rec = json.loads(path.read_text())
        alive = Proc(**rec["supervisor"]).alive()
        print(f"pod {rec['namespace']}/{rec['name']}: {rec.get('state') if alive else 'GONE'} "
              f"pid {rec.get('pid')} {rec.get('containerID')} {rec.get('podIP')}")
    if _up(state):
        print("up")
        return 0
    print("not up")
    return 3


def cmd_logs(args: argparse.Namespace) -> int:
    candidates = [LOGS_DIR / f"{args.name}.log", LOGS_DIR / "pods" / f"{args.name.replace('/', '_')}.log"]
    if args.name == "agent":
        candidates.insert(0, LOGS_DIR / "pods" / f"{control_plane.SYSTEM_NAMESPACE}_{AGENT_POD}.log")
    for path in candidates:
        if path.is_file():
            sys.stdout.write(path.read_text(errors="replace")[-200_000:])
            return 0
    raise HarnessError(f"no log for {args.name!r} in {LOGS_DIR}")


def cmd_restart(args: argparse.Namespace) -> int:
    state = load_state()
    if not state.get("ready"):
        raise HarnessError("the harness is not up")
    with locked():
        if args.what == "operator":
            old = recorded_procs(state).get("operator")
            if old is not None:
                old.stop()
            start_operator(state)
            print(json.dumps({"operator": recorded_procs(state)["operator"].pid}))
            return 0
    kubelet = recorded_procs(state)["agent-kubelet"]
    before = (read_record(control_plane.SYSTEM_NAMESPACE, AGENT_POD) or {}).get("containerID")
    wanted = os.environ.get("MACE_HARNESS_AGENT_ARGS", "")  # extra `serve` options (a test's --max-probes)
    if wanted != state.get("agent_args", ""):
        with locked():
            state["agent_args"] = wanted
            kubelet.stop()
            start_agent(state)
            save_state(state)
    else:
        kubelet.signal(signal.SIGHUP)

    def restarted() -> dict[str, Any] | None:
        rec = read_record(control_plane.SYSTEM_NAMESPACE, AGENT_POD)
        return rec if rec and rec.get("containerID") != before and rec.get("ready") else None

    print(json.dumps(_public(wait_for("the agent to restart and be ready", restarted, 120))))
    return 0


# -- down ---------------------------------------------------------------------------------------------

def teardown(state: dict[str, Any]) -> list[str]:
    """End every recorded process, remove namespaces, devices and cgroups; return what failed."""
    errors: list[str] = []
    # Pods first (their kubelets delete the Pod objects while the API server still runs).
    kubelets = []
    for path in sorted(PODS_DIR.glob("*.json")) if PODS_DIR.is_dir() else []:
        try:
            kubelets.append(Proc(**json.loads(path.read_text())["supervisor"]))
        except (ValueError, KeyError, TypeError):
            continue
    procs = recorded_procs(state)
    kubelets += [p for role, p in procs.items() if role.endswith("kubelet")]
    for proc in kubelets:
        proc.signal(signal.SIGTERM)
    for proc in kubelets:
        try:
            proc.stop(grace=20)
        except HarnessError as exc:
            errors.append(str(exc))
    for role in ("operator", "forwarder", "kube-apiserver", "etcd"):
        if role in procs:
            try:
                procs[role].stop()
            except HarnessError as exc:
                errors.append(str(exc))
    errors += node_mod.remove_node(state.get("node") or {"root_dev": node_mod.ROOT_DEV})
    for leftover in Path("/run/netns").glob(f"{PREFIX}-*") if Path("/run/netns").is_dir() else []:
        try:
            run(["ip", "netns", "del", leftover.name])
        except HarnessError as exc:
            errors.append(str(exc))
    for root in node_mod.cgroup_roots():
        errors += node_mod.remove_cgroup_tree(root / PREFIX)
    if state.get("etcd_data"):
        shutil.rmtree(state["etcd_data"], ignore_errors=True)
    shutil.rmtree(PODS_DIR, ignore_errors=True)
    for name in ("state.json", "kubeconfig", "mace-operator.kubeconfig", "mace-agent.kubeconfig",
                 "mace-operator.token", "mace-agent.token"):
        (HARNESS_DIR / name).unlink(missing_ok=True)
    return errors


def cmd_down(_args: argparse.Namespace) -> int:
    with locked():
        state = load_state()
        errors = teardown(state)
    if errors:
        raise HarnessError("down incomplete: " + "; ".join(errors))
    log("down: every harness process, namespace, device and cgroup is gone")
    return 0


# -- main ---------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tests/harness/cluster", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build tools, start etcd, kube-apiserver, the node, agent and operator")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument("--no-agent", action="store_true", help="do not start the agent")
    up.set_defaults(func=cmd_up)
    pod = sub.add_parser("pod", usage="%(prog)s NAME [-n NS] [--restart | --delete] [-- CMD ARGS...]",
                         help="run CMD as a pod on the node (prints its PID, container ID, IP)")
    pod.add_argument("name")
    pod.add_argument("-n", "--namespace", default="default")
    pod.add_argument("--container", default="main")
    pod.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    pod.add_argument("--restart-policy", choices=("Never", "Always"), default="Never",
                     help="what happens when CMD exits (default Never: the pod ends Succeeded/Failed)")
    action = pod.add_mutually_exclusive_group()
    action.add_argument("--restart", action="store_true",
                        help="restart the pod's container (new container ID and PID, restartCount + 1)")
    action.add_argument("--delete", action="store_true", help="stop the pod and delete its Pod object")
    pod.set_defaults(func=cmd_pod)
    kubectl = sub.add_parser("kubectl", help="run kubectl against the harness", add_help=False)
    kubectl.add_argument("args", nargs=argparse.REMAINDER)
    kubectl.set_defaults(func=cmd_kubectl)
    sub.add_parser("env", help="print KUBECONFIG=... MACE_REMOTE_ADDR=... lines").set_defaults(func=cmd_env)
    sub.add_parser("status", help="what runs (exit 3 if not up)").set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="print a component's or a pod's log")
    logs.add_argument("name", help="etcd, kube-apiserver, operator, agent, forwarder or NS_POD")
    logs.set_defaults(func=cmd_logs)
    restart = sub.add_parser("restart", help="restart the agent (new PID) or the operator")
    restart.add_argument("what", choices=("agent", "operator"))
    restart.set_defaults(func=cmd_restart)
    sub.add_parser("down", help="stop and remove everything the harness made").set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if argv[:1] == ["pod"] and "--" in argv:  # everything after -- is the pod's command, untouched
        split = argv.index("--")
        argv, cmd = argv[:split], argv[split + 1:]
    args = _parser().parse_args(argv)
    args.cmd = cmd
    if os.geteuid() != 0:
        print("cluster: needs root (network namespaces, cgroups, eBPF)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
