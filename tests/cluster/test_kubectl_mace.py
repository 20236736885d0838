"""kubectl mace against the harness's real API server, operator and agent: the agent is reached only
through the API server (pods/proxy), as a user with a kubeconfig would."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness_client import REPO, Cluster, unique, wait_for
from kubectl_helpers import AGENT_NAMESPACE, PLUGIN, Measured, frames, latency_rows, measured_probe, plugin
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster
MEASURE_LABEL = "app.kubernetes.io/managed-by=kubectl-mace"


@pytest.fixture(scope="module")
def measured(cluster: Cluster) -> Iterator[Measured]:
    with measured_probe(cluster, "mace-kc") as found:
        yield found


def measure_probes(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, label_selector=MEASURE_LABEL)["items"]
    return found


def test_watch_frames_grow_and_match_the_status(cluster: Cluster, measured: Measured) -> None:
    # A frame every 6 s: the harness's agent refreshes its figures every 5 s (mace-agent serve's default
    # publish interval; the chart sets 1 s), so every frame's interval holds new samples.
    done = plugin(cluster, "watch", measured.probe, "-n", measured.namespace, "--frames", "3",
                  "--interval", "6")
    assert done.returncode == 0, done.stderr
    shown = frames(done.stdout)
    assert len(shown) == 3, done.stdout
    rows = [latency_rows(frame) for frame in shown]
    status = cluster.status(measured.namespace, measured.probe)["results"]
    for direction in ("egress", "ingress"):
        starts = [r[(direction, "start")].count for r in rows]
        assert starts == sorted(starts) and starts[-1] > starts[0], (direction, starts, done.stdout)
        exact = status[direction]["p50Ns"] / 1e9
        for i, frame in enumerate(rows):
            interval = frame[(direction, "interval")]
            assert interval.count > 0, done.stdout  # the pod pings 10 times a second
            if i:  # each frame's scrape saw new figures: its interval is exactly what the start gained
                assert interval.count == starts[i] - starts[i - 1], (direction, i, starts, done.stdout)
            # Since the start, from the log2 buckets: within one bucket of the agent's exact median.
            start = frame[(direction, "start")]
            assert start.p50 is not None and start.p50 / 2 <= exact <= start.p50 * 2, (start, exact)
            # The interval's median may move with the machine's load (other work shares its 2 cores).
            assert interval.p50 is not None and interval.p50 / 4 <= exact <= interval.p50 * 4, (interval,
                                                                                              exact)
    assert "latency histogram" in done.stdout and "█" in done.stdout
    assert "loss: unmatched" in done.stdout


def test_watch_events_prints_readable_lines(cluster: Cluster, measured: Measured) -> None:
    done = plugin(cluster, "watch", measured.probe, "-n", measured.namespace, "--events", "--frames", "6")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6, done.stdout
    for line in lines:
        words = line.split()
        assert words[1] in ("egress", "ingress") and words[2].endswith("us") and "icmp_seq=" in line, line


def test_top_lists_the_probe_with_its_rate(cluster: Cluster, measured: Measured) -> None:
    done = plugin(cluster, "top", "-n", measured.namespace, "--frames", "2")
    assert done.returncode == 0, done.stderr
    last = frames(done.stdout)[-1]
    row = next(line.split() for line in last if line.split()[:1] == [measured.probe])
    assert row[1:4] == [measured.pod, cluster.node, "Measuring"], row
    assert float(row[-1]) > 0, row  # samples per second between the two frames
    everywhere = plugin(cluster, "top", "-A", "--frames", "1")
    assert everywhere.returncode == 0, everywhere.stderr
    lines = everywhere.stdout.splitlines()
    assert any(line.split()[:2] == [measured.namespace, measured.probe] for line in lines)


def test_missing_probe_or_pod_is_a_clear_error(cluster: Cluster, measured: Measured) -> None:
    cases = {("watch", "no-such-probe"): 'latencyprobe "no-such-probe" not found in namespace',
             ("watch", "no-such-probe", "--events"): 'latencyprobe "no-such-probe" not found in namespace',
             ("measure", "no-such-pod", "--icmp"): 'pod "no-such-pod" not found in namespace',
             ("measure", measured.pod, "--udp", "53", "--container", "nope"): 'has no container "nope"'}
    for args, message in cases.items():
        done = plugin(cluster, *args, "-n", measured.namespace, "--frames", "1")
        assert done.returncode == 1, (args, done)
        assert message in done.stderr and measured.namespace in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout
    assert not measure_probes(cluster, measured.namespace)


def test_measure_creates_its_probe_and_deletes_it_at_the_end(cluster: Cluster, measured: Measured) -> None:
    cluster.ping_pod(measured.namespace, "pinger2")
    try:
        done = plugin(cluster, "measure", "pinger2", "-n", measured.namespace, "--icmp", "--duration", "10")
    finally:
        cluster.delete_pod(measured.namespace, "pinger2")
    assert done.returncode == 0, done.stderr
    created = done.stderr.split("created latencyprobe ", 1)[1].split()[0]
    assert created.startswith(f"{measured.namespace}/measure-pinger2-"), done.stderr
    assert f"deleted latencyprobe {created}" in done.stderr
    last = latency_rows(frames(done.stdout)[-1])
    assert last[("egress", "start")].count > 0 and last[("ingress", "start")].count > 0, done.stdout
    assert not measure_probes(cluster, measured.namespace)


def test_measure_of_an_already_measured_pod_gets_its_own_figures(cluster: Cluster) -> None:
    """The pod's ICMP is measured by a probe already: the measure's probe shares the node's measurement
    and counts from its own start. (A pod of its own: in a CI run the module's pinger stopped when the
    test before this one deleted its pod.)"""
    with measured_probe(cluster, "mace-kcm") as measured:
        done = plugin(cluster, "measure", measured.pod, "-n", measured.namespace, "--icmp", "--duration", "6",
                      timeout=90)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "deleted latencyprobe" in done.stderr
        last = latency_rows(frames(done.stdout)[-1])
        since_start = last[("egress", "start")].count
        whole = cluster.status(measured.namespace, measured.probe)["results"]["egress"]["count"]
        assert 0 < since_start < whole, done.stdout[-3000:]
        assert not measure_probes(cluster, measured.namespace)


def test_measure_deletes_its_probe_on_ctrl_c(cluster: Cluster, measured: Measured) -> None:
    env = {**os.environ, "KUBECONFIG": cluster.env["KUBECONFIG"]}
    # SIGINT inherited as ignored (a background job, a CI runner): Ctrl-C must still end and clean up.
    proc = subprocess.Popen([PLUGIN, "measure", measured.pod, "-n", measured.namespace, "--tcp", "8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        probe = wait_for("the measure's probe", lambda: measure_probes(cluster, measured.namespace), 30)[0]
        spec = probe["spec"]
        assert spec["out"]["corr"] == ["tcp_dst_port", "tcp_seq"] and spec["in"]["corr"] == ["tcp_src_port",
                                                                                            "tcp_seq"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert f"deleted latencyprobe {measured.namespace}/{probe['metadata']['name']}" in err, err
    assert "Traceback" not in err
    assert not measure_probes(cluster, measured.namespace)


def _token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig for ServiceAccount ``account`` (a bound token), with the harness's server and CA."""
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    token = cluster.core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(Path(cluster.env["KUBECONFIG"]).read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "harness", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa",
                      "context": {"cluster": "harness", "user": account, "namespace": namespace}}],
    }))
    return str(path)


def test_user_without_the_documented_rbac_is_refused(cluster: Cluster, measured: Measured,
                                                     tmp_path: Path) -> None:
    rbac = list(yaml.safe_load_all((REPO / "examples" / "kubectl-mace-rbac.yaml").read_text()))
    account = unique("viewer")
    kubeconfig = _token_kubeconfig(cluster, measured.namespace, account, tmp_path / "kubeconfig")
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": measured.namespace}]
    rbac_api: Any = client.RbacAuthorizationV1Api(cluster.core.api_client)
    bindings: list[tuple[str, str]] = []
    created: list[dict[str, Any]] = []
    try:
        for obj in rbac:
            try:
                if obj["kind"] == "ClusterRole":
                    rbac_api.create_cluster_role(obj)
                else:
                    rbac_api.create_namespaced_role(AGENT_NAMESPACE, obj)
                created.append(obj)
            except ApiException as error:
                if error.status != 409:  # already there (another run's): the same documented rules
                    raise

        def watch() -> subprocess.CompletedProcess[str]:
            return plugin(cluster, "watch", measured.probe, "--frames", "1", kubeconfig=kubeconfig)

        def watch_until(accept: Callable[[subprocess.CompletedProcess[str]], bool]
                        ) -> subprocess.CompletedProcess[str]:
            """RBAC changes reach the authorizer a moment after they are written."""
            def attempt() -> subprocess.CompletedProcess[str] | None:
                done = watch()
                return done if accept(done) else None
            return wait_for("the binding to apply", attempt, 30)

        def bind(namespace: str, kind: str, role: str) -> None:
            name = unique("mace-user")
            rbac_api.create_namespaced_role_binding(namespace, {
                "metadata": {"name": name}, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}})
            bindings.append((namespace, name))

        nothing = watch()  # no binding at all (the context's namespace is the probe's)
        assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
        assert (f"forbidden: you may not get latencyprobes.mace.dev in namespace {measured.namespace}"
                in nothing.stderr), nothing.stderr
        assert "docs/kubectl-mace.md#permissions" in nothing.stderr

        bind(measured.namespace, "ClusterRole", "mace-viewer")
        no_agents = watch_until(lambda done: "latencyprobes" not in done.stderr)
        assert no_agents.returncode == 1
        assert f"forbidden: you may not list pods in namespace {AGENT_NAMESPACE}" in no_agents.stderr

        bind(AGENT_NAMESPACE, "Role", "mace-agent-reader")
        allowed = watch_until(lambda done: done.returncode == 0)
        assert latency_rows(frames(allowed.stdout)[0])[("egress", "start")].count > 0, allowed.stdout
        measure = plugin(cluster, "measure", measured.pod, "--icmp", "--frames", "1", kubeconfig=kubeconfig)
        assert measure.returncode == 1  # measure needs mace-measurer
        assert f"forbidden: you may not get pods in namespace {measured.namespace}" in measure.stderr
        assert not measure_probes(cluster, measured.namespace)
    finally:
        for namespace, name in bindings:
            rbac_api.delete_namespaced_role_binding(name, namespace)
        for obj in created:
            if obj["kind"] == "ClusterRole":
                rbac_api.delete_cluster_role(obj["metadata"]["name"])
            else:
                rbac_api.delete_namespaced_role(obj["metadata"]["name"], AGENT_NAMESPACE)
        cluster.core.delete_namespaced_service_account(account, measured.namespace)
