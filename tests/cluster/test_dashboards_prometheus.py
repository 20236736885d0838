"""The chart's dashboard and alert queries on a real Prometheus (Debian's) scraping the harness's real
agent while it measures a real probe, and its real operator: every panel's query returns data for that
probe, the rules pass ``promtool check rules`` and ``promtool test rules``, the latency alert fires on a
low threshold, and the not-measuring alert on probes no agent runs (their pod missing or not running)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness_client import REPO, Cluster, unique, wait_for
from kubectl_helpers import Measured, measured_probe
from operator_helpers import BarePods

from mace.probe import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster
CHART = REPO / "helm" / "mace"
RATE_WINDOW = "15s"
"""What $__rate_interval stands for here: Prometheus scrapes every second."""
LOW_THRESHOLD = "0.000001"
"""A p99 threshold (1 us) every real path is above: the latency alert must fire."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: scripts/dev setup installs Debian's prometheus package")
    return found


def helm() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    done = subprocess.run([str(REPO / "tests" / "harness" / "build-tools.sh")], capture_output=True,
                          text=True, timeout=3600, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)["HELM"]


def render(*values: str) -> list[dict[str, Any]]:
    done = subprocess.run([helm(), "template", "mace", str(CHART), "--set", "dashboards.enabled=true",
                           "--set", "prometheusRule.enabled=true", *values],
                          capture_output=True, text=True, timeout=120, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def rules_file(objects: list[dict[str, Any]], path: Path) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rules file."""
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = next(o for o in objects
                      if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards"))
    found: dict[str, Any] = json.loads(config_map["data"]["mace-latency.json"])
    return found


@dataclass
class Prometheus:
    url: str

    def data(self, expr: str) -> list[dict[str, Any]]:
        """The query's series that hold a number (histogram_quantile gives NaN over empty buckets)."""
        return [s for s in self.query(expr) if math.isfinite(float(s["value"][1]))]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())["data"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def measured(cluster: Cluster) -> Iterator[Measured]:
    with measured_probe(cluster, "mace-prom") as found:
        yield found


@dataclass(frozen=True)
class Stuck:
    """Probes no agent runs: ``pending`` names a pod that never runs, ``failed`` one that does not exist."""

    namespace: str
    pending: str = "waits"
    failed: str = "lost"


@pytest.fixture(scope="module")
def stuck(cluster: Cluster) -> Iterator[Stuck]:
    found = Stuck(unique("mace-stuck"))
    cluster.core.create_namespace({"metadata": {"name": found.namespace}})
    pods = BarePods(cluster)
    try:
        pods.create(found.namespace, "sleepy", cluster.node)
        cluster.create_probe(found.namespace, found.pending, "sleepy")
        cluster.create_probe(found.namespace, found.failed, "no-such-pod")
        yield found
    finally:
        for probe in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, found.namespace,
                                                                  PLURAL)["items"]:
            cluster.delete_probe(found.namespace, probe["metadata"]["name"])
        pods.delete_all()


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, measured: Measured, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Prometheus]:
    """Debian's Prometheus with its own config and data directory, scraping the harness agent and operator
    every second and evaluating the chart's rules rendered with a latency threshold every path exceeds."""
    work = tmp_path_factory.mktemp("prometheus")
    rules = rules_file(render("--set-json", f"prometheusRule.p99ThresholdSeconds={LOW_THRESHOLD}",
                              "--set", "prometheusRule.latencyWindow=15s",
                              "--set", "prometheusRule.latencyFor=0s",
                              "--set", "prometheusRule.notMeasuringFor=0s"), work / "rules.yaml")
    targets = {"mace-agent": cluster.agent_url, "mace-operator": cluster.env["MACE_OPERATOR_METRICS_URL"]}
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": job,
                            "static_configs": [{"targets": [urllib.parse.urlsplit(url).netloc]}]}
                           for job, url in targets.items()]}))
    port = _free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen([_tool("prometheus"), f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return proc.poll() is not None and pytest.fail((work / "prometheus.log").read_text()[-2000:])
        wait_for("Prometheus to be ready", ready, 60, interval=0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def panel_queries(board: dict[str, Any], measured: Measured) -> list[tuple[str, str]]:
    """(panel title, query) of every panel target, with the dashboard's variables set to the probe."""
    values = {"$namespace": measured.namespace, "$probe": measured.probe, "$direction": "egress",
              "$__rate_interval": RATE_WINDOW}
    found = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            found.append((panel["title"], expr))
    return found


def test_every_panel_query_returns_data_for_the_probe(prometheus: Prometheus, measured: Measured,
                                                      cluster: Cluster) -> None:
    board = dashboard(render())
    queries = panel_queries(board, measured)
    assert len(queries) >= 10
    for title, expr in queries:
        result = wait_for(f"data for panel {title!r}: {expr}", lambda e=expr: prometheus.data(e), 60, 0.5)
        for series in result:
            labels = series["metric"]
            assert labels.get("probe", measured.probe) == measured.probe, (title, labels)
            assert labels.get("namespace", measured.namespace) == measured.namespace, (title, labels)
    # The p50 panel (the last 15 s) agrees with the agent's exact since-start median: within a bucket but
    # for what the machine's load moves (other work shares its 2 cores), so within a factor of 4.
    status = cluster.status(measured.namespace, measured.probe)["results"]
    for direction in ("egress", "ingress"):
        expr = next(e for t, e in queries if t.lower().startswith(direction) and "0.5," in e)
        p50 = float(wait_for(expr, lambda e=expr: prometheus.data(e), 30, 0.5)[0]["value"][1])
        exact = status[direction]["p50Ns"] / 1e9
        assert p50 / 4 <= exact <= p50 * 4, (direction, p50, exact)
    for name in ("namespace", "probe"):
        variable = next(v for v in board["templating"]["list"] if v["name"] == name)
        query = variable["query"]["query"].replace("$namespace", measured.namespace)
        selector = query[len("label_values("):].rsplit(",", 1)[0]
        values = prometheus.get(f"/api/v1/label/{name}/values?"
                                + urllib.parse.urlencode({"match[]": selector}))
        assert getattr(measured, name) in values, (name, values)


def test_rules_pass_promtool_and_alert_on_real_data(prometheus: Prometheus, measured: Measured,
                                                    stuck: Stuck, tmp_path: Path) -> None:
    rules = rules_file(render(), tmp_path / "rules.yaml")
    check = subprocess.run([_tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0 and "SUCCESS: 3 rules found" in check.stdout, check.stdout + check.stderr

    def firing() -> list[dict[str, Any]] | None:
        alerts = prometheus.get("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "MaceProbeLatencyHigh"
                and a["labels"].get("probe") == measured.probe and a["state"] == "firing"] or None

    found = wait_for("MaceProbeLatencyHigh to fire with a 1 us threshold", firing, 60, 0.5)
    assert {a["labels"]["direction"] for a in found} == {"egress", "ingress"}
    # The probes no agent runs are not measuring, by the operator's phase; the measured probe is.
    groups = yaml.safe_load(rules.read_text())["groups"]
    exprs = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    want = {(stuck.pending, "Pending"), (stuck.failed, "Failed")}

    def not_measuring() -> list[dict[str, str]] | None:
        found = [s["metric"] for s in prometheus.query(exprs["MaceProbeNotMeasuring"])]
        mine = {(m["probe"], m.get("phase", "")) for m in found if m["namespace"] == stuck.namespace}
        return found if mine == want else None

    selected = wait_for(f"MaceProbeNotMeasuring's expression to select {want}", not_measuring, 60, 0.5)
    assert (measured.namespace, measured.probe) not in {(m["namespace"], m["probe"]) for m in selected}

    def stuck_firing() -> set[tuple[str, str]] | None:
        alerts = prometheus.get("/api/v1/alerts")["alerts"]
        found = {(a["labels"]["probe"], a["labels"].get("phase", "")) for a in alerts
                 if a["labels"]["alertname"] == "MaceProbeNotMeasuring" and a["state"] == "firing"
                 and a["labels"]["namespace"] == stuck.namespace}
        return found if found == want else None

    wait_for("MaceProbeNotMeasuring to fire for the stuck probes", stuck_firing, 60, 0.5)
    assert not prometheus.query(exprs["MaceAgentDisconnected"])
    # Both halves of the expression read real series: asked for Measuring, each finds the measured probe.
    measuring = (exprs["MaceProbeNotMeasuring"].replace('"Pending|Failed"', '"Measuring"')
                 .replace('"Attaching|Error"', '"Measuring"'))
    assert measured.probe in {s["metric"]["probe"] for s in prometheus.query(measuring)}
    for half in measuring.split(" or on (namespace, probe) "):
        assert measured.probe in {s["metric"]["probe"] for s in prometheus.query(half)}, half


PROMTOOL_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 60 packets a minute, all between 1 ms and 2 ms: p99 ~ 2 ms, above the default 1 ms.
      - series: '{bucket}{{{slow},le="0.001024"}}'
        values: '0x30'
      - series: '{bucket}{{{slow},le="0.002048"}}'
        values: '0+60x30'
      - series: '{bucket}{{{slow},le="+Inf"}}'
        values: '0+60x30'
      # 60 packets a minute under 64 us: no alert.
      - series: '{bucket}{{{fast},le="0.000064"}}'
        values: '0+60x30'
      - series: '{bucket}{{{fast},le="+Inf"}}'
        values: '0+60x30'
      # The agents' run states: "stuck" (Measuring to the operator) and "silent" (Pending to the operator:
      # its agent stopped reporting) in Error, "fine" measuring.
      - series: 'mace_probe_state{{namespace="apps",probe="stuck",state="Error"}}'
        values: '1x30'
      - series: 'mace_probe_state{{namespace="apps",probe="stuck",state="Measuring"}}'
        values: '0x30'
      - series: 'mace_probe_state{{namespace="apps",probe="silent",state="Error"}}'
        values: '1x30'
      - series: 'mace_probe_state{{namespace="apps",probe="fine",state="Measuring"}}'
        values: '1x30'
      - series: 'mace_probe_state{{namespace="apps",probe="fine",state="Error"}}'
        values: '0x30'
      # The operator's phases (no agent runs "waiting" and "broken").
{phases}
      - series: 'mace_agent_api_connected{{instance="node-a:9464"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 5m
        alertname: MaceProbeLatencyHigh
        exp_alerts: []
      - eval_time: 20m
        alertname: MaceProbeLatencyHigh
        exp_alerts:
          - exp_labels: {{namespace: apps, probe: slow, direction: egress, severity: warning}}
            exp_annotations:
              summary: "LatencyProbe apps/slow: egress p99 above 0.001s"
              description: "The egress p99 over 5m is 2.038ms (threshold 0.001s)."
      - eval_time: 5m
        alertname: MaceProbeNotMeasuring
        exp_alerts: []
      # One alert per probe: by its phase where the operator's says Pending or Failed ("silent" too, not
      # also by its agent's Error), else by its agent's run state; none for Measuring or Completed.
      - eval_time: 15m
        alertname: MaceProbeNotMeasuring
        exp_alerts:
          - exp_labels: {{namespace: apps, probe: waiting, phase: Pending, severity: warning}}
            exp_annotations:
              summary: "LatencyProbe apps/waiting is not Measuring: phase Pending"
              description: >-
                The operator has held it in phase Pending for 10m:
                kubectl describe latencyprobe -n apps waiting shows why.
          - exp_labels: {{namespace: apps, probe: broken, phase: Failed, severity: warning}}
            exp_annotations:
              summary: "LatencyProbe apps/broken is not Measuring: phase Failed"
              description: >-
                The operator has held it in phase Failed for 10m:
                kubectl describe latencyprobe -n apps broken shows why.
          - exp_labels: {{namespace: apps, probe: silent, phase: Pending, severity: warning}}
            exp_annotations:
              summary: "LatencyProbe apps/silent is not Measuring: phase Pending"
              description: >-
                The operator has held it in phase Pending for 10m:
                kubectl describe latencyprobe -n apps silent shows why.
          - exp_labels: {{namespace: apps, probe: stuck, state: Error, severity: warning}}
            exp_annotations:
              summary: "LatencyProbe apps/stuck is not Measuring: its agent's run is Error"
              description: >-
                Its agent has held the run in state Error for 10m:
                kubectl describe latencyprobe -n apps stuck shows why.
      - eval_time: 15m
        alertname: MaceAgentDisconnected
        exp_alerts:
          - exp_labels: {{instance: "node-a:9464", severity: warning}}
            exp_annotations:
              summary: "Mace agent node-a:9464 has no LatencyProbe watch"
              description: >-
                The agent cannot watch LatencyProbes on the API server:
                its probes' status and runs are not kept up to date.
"""


PHASE_OF = {"waiting": "Pending", "broken": "Failed", "silent": "Pending", "stuck": "Measuring",
            "fine": "Measuring", "done": "Completed"}
"""The operator's phase of each synthetic probe."""


def phase_series() -> str:
    """promtool input series of mace_probe_phase for PHASE_OF: 1 for each probe's phase, 0 for the others."""
    lines = []
    for probe, phase in PHASE_OF.items():
        for other in ("Pending", "Measuring", "Failed", "Completed"):
            labels = f'namespace="apps",probe="{probe}",phase="{other}"'
            lines += [f"      - series: 'mace_probe_phase{{{labels}}}'",
                      f"        values: '{int(other == phase)}x30'"]
    return "\n".join(lines)


def test_alerts_fire_on_synthetic_series_with_the_default_values(tmp_path: Path) -> None:
    rules = rules_file(render(), tmp_path / "rules.yaml")
    tests = tmp_path / "tests.yaml"
    tests.write_text(PROMTOOL_TESTS.format(rules=rules, bucket="mace_probe_latency_seconds_bucket",
                                           slow='namespace="apps",probe="slow",direction="egress"',
                                           fast='namespace="apps",probe="fast",direction="egress"',
                                           phases=phase_series()))
    done = subprocess.run([_tool("promtool"), "test", "rules", str(tests)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
