"""etcd and kube-apiserver on loopback, kubeconfigs, the CRD, service accounts and their RBAC."""

from __future__ import annotations

import base64
import shlex
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from common import (
    HARNESS_DIR,
    KUBECONFIG,
    LOGS_DIR,
    PREFIX,
    REPO,
    HarnessError,
    Proc,
    log,
    python,
    run,
    spawn,
    wait_for,
)

SYSTEM_NAMESPACE = "mace-system"
OPERATOR_SA = "mace-operator"
AGENT_SA = "mace-agent"
SERVICE_CIDR = "10.96.0.0/24"
TOKEN_DURATION = "8760h"


def build_tools() -> dict[str, str]:
    """Run ``build-tools.sh`` (cached builds) and return its KEY=path assignments."""
    out = run(["bash", str(REPO / "tests" / "harness" / "build-tools.sh")], timeout=3600)
    tools: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            tools[key] = shlex.split(value)[0] if value else ""
    missing = {"KUBE_APISERVER", "KUBECTL", "ETCD"} - {k for k, v in tools.items() if Path(v).is_file()}
    if missing:
        raise HarnessError(f"build-tools.sh did not provide {', '.join(sorted(missing))}")
    return tools


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_etcd(etcd: str, data_dir: Path, client_port: int, peer_port: int) -> Proc:
    """etcd on 127.0.0.1 with its data on ``data_dir`` (tmpfs: fsync is cheap there)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    proc = spawn("etcd", [etcd, "--name", PREFIX, "--data-dir", str(data_dir),
                          "--listen-client-urls", client, "--advertise-client-urls", client,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", f"{PREFIX}={peer}", "--listen-metrics-urls", "",
                          "--log-level", "warn", "--logger", "zap"],
                 LOGS_DIR / "etcd.log")

    def healthy() -> bool:
        if not proc.alive():
            raise HarnessError(f"etcd exited; see {proc.log}")
        try:
            with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                return b'"true"' in response.read()
        except (OSError, urllib.error.URLError):
            return False

    wait_for("etcd to answer /health", healthy, 30)
    return proc


def start_apiserver(binary: str, pki: Path, etcd_port: int, port: int) -> Proc:
    """kube-apiserver on 127.0.0.1:``port`` (RBAC, client certificates, service-account tokens)."""
    proc = spawn("kube-apiserver", [
        binary,
        "--etcd-servers", f"http://127.0.0.1:{etcd_port}", "--etcd-prefix", f"/{PREFIX}",
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port),
        "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"), "--cert-dir", str(pki),
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", SERVICE_CIDR, "--authorization-mode", "RBAC",
        # No controller manager runs here, so nothing would create the "default" ServiceAccount
        # every Pod needs with this admission plugin on.
        "--disable-admission-plugins", "ServiceAccount", "--allow-privileged=true",
        "--profiling=false", "--endpoint-reconciler-type", "none", "--v", "1",
    ], LOGS_DIR / "kube-apiserver.log")
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def ready() -> bool:
        if not proc.alive():
            raise HarnessError(f"kube-apiserver exited; see {proc.log}")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2,
                                        context=context) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    wait_for("kube-apiserver to be ready", ready, 120, interval=0.25)
    return proc


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, pki: Path, port: int, user: dict[str, str], name: str) -> None:
    """A kubeconfig for https://127.0.0.1:``port`` with the given user credentials."""
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
        "clusters": [{"name": "mace-harness", "cluster": {
            "server": f"https://127.0.0.1:{port}", "certificate-authority-data": _b64(pki / "ca.crt")}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "mace-harness", "user": name}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def write_admin_kubeconfig(pki: Path, port: int) -> None:
    """``.harness/kubeconfig``: the admin (system:masters) by client certificate."""
    user = {"client-certificate-data": _b64(pki / "admin.crt"), "client-key-data": _b64(pki / "admin.key")}
    write_kubeconfig(KUBECONFIG, pki, port, user, "mace-harness-admin")


def kubectl(tools: dict[str, str], *args: str, input_text: str | None = None, timeout: float = 60) -> str:
    """Run the harness's kubectl as the admin."""
    return run([tools["KUBECTL"], "--kubeconfig", str(KUBECONFIG), *args], input_text=input_text,
               timeout=timeout)


def crd_yaml() -> str:
    """The committed CRD, or (before it is committed) the generator's output."""
    committed = REPO / "crds" / "latencyprobe.yaml"
    if committed.is_file():
        return committed.read_text()
    return run([python(), "-m", "mace.crd"])


RBAC = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {SYSTEM_NAMESPACE}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {OPERATOR_SA}, namespace: {SYSTEM_NAMESPACE}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {AGENT_SA}, namespace: {SYSTEM_NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: mace-harness-operator}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{kind: ServiceAccount, name: {OPERATOR_SA}, namespace: {SYSTEM_NAMESPACE}}}]
---
# What the agent needs, and no more: read probes, write their status, check callers' tokens.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: mace-harness-agent}}
rules:
- apiGroups: [mace.dev]
  resources: [latencyprobes]
  verbs: [get, list, watch]
- apiGroups: [mace.dev]
  resources: [latencyprobes/status]
  verbs: [get, patch]
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: mace-harness-agent}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mace-harness-agent}}
subjects: [{{kind: ServiceAccount, name: {AGENT_SA}, namespace: {SYSTEM_NAMESPACE}}}]
"""


def install(tools: dict[str, str], pki: Path, port: int) -> None:
    """CRD (waited until Established), system namespace, service accounts, RBAC, their kubeconfigs."""
    kubectl(tools, "apply", "-f", "-", input_text=crd_yaml())
    kubectl(tools, "wait", "--for=condition=Established", "--timeout=60s", "crd/latencyprobes.mace.dev",
            timeout=70)
    kubectl(tools, "apply", "-f", "-", input_text=RBAC)
    for sa in (OPERATOR_SA, AGENT_SA):
        token = kubectl(tools, "create", "token", sa, "-n", SYSTEM_NAMESPACE, "--duration", TOKEN_DURATION)
        token_file = HARNESS_DIR / f"{sa}.token"
        token_file.write_text(token.strip() + "\n")
        token_file.chmod(0o600)
        write_kubeconfig(HARNESS_DIR / f"{sa}.kubeconfig", pki, port, {"token": token.strip()}, sa)
    log("installed the CRD, namespace mace-system, service accounts and RBAC")


def service_account_username(name: str) -> str:
    """The username a service account's tokens authenticate as."""
    return f"system:serviceaccount:{SYSTEM_NAMESPACE}:{name}"
