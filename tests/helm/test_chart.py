"""The Helm chart renders what the operator and agents need, and nothing more: lint, render with default and
non-default values, and the values schema's refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import CHART, REPO, Tools, by_kind, one

OPERATOR_CALLS = {  # (apiGroup, resource) -> verbs: what the operator and kopf call, and no more
    ("mace.dev", "latencyprobes"): {"get", "list", "watch", "patch"},
    ("mace.dev", "latencyprobes/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
AGENT_CALLS = {
    ("mace.dev", "latencyprobes"): {"list", "watch"},
    ("mace.dev", "latencyprobes/status"): {"patch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
}
NON_DEFAULT: dict[str, Any] = {
    "crds": {"install": True, "keep": True},
    "image": {"registry": "registry.example.com/team", "tag": "1.2.3", "pullPolicy": "Always",
              "pullSecrets": [{"name": "regcred"}]},
    "operator": {"watchNamespaces": ["apps", "web"], "verbose": True, "extraArgs": ["--quiet"],
                 "nodeSelector": {"kubernetes.io/os": "linux"}, "metricsPort": 9600},
    "agent": {"image": {"repository": "mirror.example.com/mace-agent", "tag": "edge"}, "port": 9500,
              "listen": "all", "maxProbes": 20, "publishIntervalSeconds": 2, "verbose": True,
              "vxlanPorts": [4790],
              "hostMounts": {"tracing": False, "kernelHeaders": False, "cgroup": False},
              "extraEnv": [{"name": "MACE_KERNEL_HEADERS", "value": "/opt/mace/kernel-headers"}],
              "tolerations": [], "priorityClassName": "system-node-critical"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
}


def rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_chart_lints_strictly_with_default_and_other_values(tools: Tools, tmp_path: Path) -> None:
    tools.helm_run("lint", "--strict", str(CHART))
    tools.helm_run("lint", "--strict", str(CHART), "--values", values_file(tmp_path, NON_DEFAULT))


def test_chart_crd_is_the_generated_one() -> None:
    chart_copy = CHART / "files" / "latencyprobe.yaml"
    assert chart_copy.read_text() == (REPO / "crds" / "latencyprobe.yaml").read_text(), (
        "helm/mace/files/latencyprobe.yaml differs from crds/latencyprobe.yaml: "
        "cp crds/latencyprobe.yaml helm/mace/files/latencyprobe.yaml")


def test_default_render_has_every_object(tools: Tools) -> None:
    objects = tools.render()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted([
        ("CustomResourceDefinition", "latencyprobes.mace.dev"),
        ("ServiceAccount", "mace-operator"), ("ServiceAccount", "mace-agent"),
        ("ClusterRole", "mace-operator"), ("ClusterRole", "mace-agent"),
        ("ClusterRoleBinding", "mace-operator"), ("ClusterRoleBinding", "mace-agent"),
        ("Deployment", "mace-operator"), ("DaemonSet", "mace-agent"), ("Service", "mace-agent"),
        ("Service", "mace-operator")])
    crd = one(objects, "CustomResourceDefinition")
    generated = yaml.safe_load((REPO / "crds" / "latencyprobe.yaml").read_text())
    assert crd["spec"] == generated["spec"]
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "mace"
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "mace-system"


def test_rbac_grants_exactly_what_the_code_calls(tools: Tools) -> None:
    objects = tools.render()
    assert rules(one(objects, "ClusterRole", "-operator")) == OPERATOR_CALLS
    assert rules(one(objects, "ClusterRole", "-agent")) == AGENT_CALLS
    for component in ("operator", "agent"):
        binding = one(objects, "ClusterRoleBinding", f"-{component}")
        assert binding["roleRef"]["name"] == f"mace-{component}"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"mace-{component}",
                                        "namespace": "mace-system"}]
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


def test_agent_daemonset_matches_the_operator_contract(tools: Tools) -> None:
    agent = one(tools.render(), "DaemonSet")
    pod = agent["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "mace-agent"
    assert labels["app.kubernetes.io/component"] == "agent"
    spec = pod["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == "mace-agent"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    c = container(agent)
    assert c["ports"] == [{"name": "http", "containerPort": 9464, "protocol": "TCP"}]
    assert c["args"][:2] == ["mace-agent", "serve"]
    assert "--operator-username=system:serviceaccount:mace-system:mace-operator" in c["args"]
    assert "--listen=[$(POD_IP)]:9464" in c["args"]
    assert "--max-probes=1024" in c["args"] and "--map-entries=4096" in c["args"]
    assert "--vxlan-ports=4789,8472" in c["args"]
    assert {e["name"] for e in c["env"]} == {"NODE_NAME", "POD_IP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_agent_runs_with_capabilities_not_privileged(tools: Tools) -> None:
    agent = one(tools.render(), "DaemonSet")
    security = container(agent)["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["capabilities"]["add"] == ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_agent_mounts_the_nodes_tracing_headers_and_cgroups(tools: Tools) -> None:
    agent = one(tools.render(), "DaemonSet")
    volumes = {v["name"]: v for v in agent["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container(agent)["volumeMounts"]}
    host = {mounts[path]["mountPath"]: volumes[mounts[path]["name"]]["hostPath"]["path"]
            for path in mounts if "hostPath" in volumes[mounts[path]["name"]]}
    assert host == {"/sys/kernel/debug": "/sys/kernel/debug", "/sys/kernel/tracing": "/sys/kernel/tracing",
                    "/lib/modules": "/lib/modules", "/usr/src": "/usr/src",
                    "/host/sys/fs/cgroup": "/sys/fs/cgroup"}
    assert all(mounts[p].get("readOnly") for p in ("/lib/modules", "/usr/src", "/host/sys/fs/cgroup"))
    writable = {p for p in mounts if "emptyDir" in volumes[mounts[p]["name"]]}
    assert writable == {"/tmp", "/var/cache/mace-agent"}


def test_operator_runs_unprivileged(tools: Tools) -> None:
    operator = one(tools.render(), "Deployment")
    spec = operator["spec"]["template"]["spec"]
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["serviceAccountName"] == "mace-operator"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    c = container(operator)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["args"] == ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz",
                         "--metrics=0.0.0.0:9465"]
    assert c["image"] == "ghcr.io/mace-dev/mace-operator:0.1.0"


def test_operator_metrics_have_a_service(tools: Tools) -> None:
    objects = tools.render()
    ports = {p["name"]: p["containerPort"] for p in container(one(objects, "Deployment"))["ports"]}
    assert ports == {"liveness": 8080, "metrics": 9465}
    service = one(objects, "Service", "-operator")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9465, "targetPort": "metrics",
                                         "protocol": "TCP"}]


def test_apparmor_profile_follows_the_kubernetes_version(tools: Tools) -> None:
    old = one(tools.render("--kube-version", "1.29.0"), "DaemonSet")
    annotations = old["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"container.apparmor.security.beta.kubernetes.io/agent": "unconfined"}
    assert "appArmorProfile" not in container(old)["securityContext"]
    new = one(tools.render("--kube-version", "1.30.0"), "DaemonSet")
    assert "annotations" not in new["spec"]["template"]["metadata"]
    assert container(new)["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}


def test_non_default_values_render_as_asked(tools: Tools, tmp_path: Path) -> None:
    objects = tools.render("--values", values_file(tmp_path, NON_DEFAULT), "--kube-version", "1.31.0",
                           release="probe-kit", namespace="observability")
    crd = one(objects, "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    operator, agent = one(objects, "Deployment"), one(objects, "DaemonSet")
    assert operator["metadata"]["name"] == "probe-kit-mace-operator"
    op = container(operator)
    assert op["image"] == "registry.example.com/team/mace-operator:1.2.3"
    assert op["imagePullPolicy"] == "Always"
    assert op["args"] == ["--namespace=apps", "--namespace=web", "--liveness=http://0.0.0.0:8080/healthz",
                          "--metrics=0.0.0.0:9600", "--verbose", "--quiet"]
    assert {"name": "metrics", "containerPort": 9600} in op["ports"]
    assert one(objects, "Service", "-operator")["spec"]["ports"][0]["port"] == 9600
    assert operator["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert operator["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert rules(one(objects, "ClusterRole", "-operator"))[("", "namespaces")] == {"list", "watch"}
    ag = container(agent)
    assert ag["image"] == "mirror.example.com/mace-agent:edge"
    assert ag["ports"][0]["containerPort"] == 9500
    assert "--listen=0.0.0.0:9500" in ag["args"] and "--max-probes=20" in ag["args"]
    assert "--operator-username=system:serviceaccount:observability:probe-kit-mace-operator" in ag["args"]
    assert "--publish-interval=2" in ag["args"] and "--verbose" in ag["args"]
    assert "--vxlan-ports=4790" in ag["args"]
    assert {"name": "MACE_KERNEL_HEADERS", "value": "/opt/mace/kernel-headers"} in ag["env"]
    spec = agent["spec"]["template"]["spec"]
    assert all("hostPath" not in v for v in spec["volumes"])
    assert "tolerations" not in spec and spec["priorityClassName"] == "system-node-critical"
    # One ServiceMonitor per component, each selecting its Service, keeping the probes' namespace label.
    for component, port in (("agent", "http"), ("operator", "metrics")):
        monitor = one(objects, "ServiceMonitor", f"-{component}")
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] == port and endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
        service = one(objects, "Service", f"-{component}")
        assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        assert port in {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["observability"]}


def test_privileged_agent_and_no_crd(tools: Tools) -> None:
    objects = tools.render("--set", "agent.privileged=true", "--set", "crds.install=false",
                           "--set", "service.enabled=false")
    assert not by_kind(objects, "CustomResourceDefinition") and not by_kind(objects, "Service")
    assert "--metrics=0.0.0.0:9465" in container(one(objects, "Deployment"))["args"]
    security = container(one(objects, "DaemonSet"))["securityContext"]
    assert security["privileged"] is True and "capabilities" not in security


@pytest.mark.parametrize(("setting", "complaint"), [
    ("agent.port=http", "/agent/port"),
    ("agent.listen=everywhere", "/agent/listen"),
    ("agent.capabilities={BPF,NET_GOD}", "/agent/capabilities/1"),
    ("agent.maxProbes=0", "/agent/maxProbes"),
    ("agent.maxProbes=4097", "/agent/maxProbes"),
    ("agent.pendingEntries=0", "/agent/pendingEntries"),
    ("agent.vxlanPorts={4789,70000}", "/agent/vxlanPorts/1"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("operator.replicas=3", "replicas"),
    ("operator.metricsPort=0", "/operator/metricsPort"),
    ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
])
def test_schema_refuses_bad_values(tools: Tools, setting: str, complaint: str) -> None:
    done = tools.helm_run("template", "mace", str(CHART), "--set", setting, check=False)
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


def test_service_monitor_needs_the_service(tools: Tools) -> None:
    done = tools.helm_run("template", "mace", str(CHART), "--set", "serviceMonitor.enabled=true",
                          "--set", "service.enabled=false", check=False)
    assert done.returncode != 0 and "serviceMonitor.enabled needs service.enabled" in done.stderr
