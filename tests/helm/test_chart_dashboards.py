"""The chart's Grafana dashboard ConfigMap and PrometheusRule: off by default, rendered as the Grafana
sidecar and the Prometheus Operator expect when turned on, and refused with bad values."""

from __future__ import annotations

import json

import pytest
from chart_tools import CHART, Tools, by_kind, one

ON = ("--set", "dashboards.enabled=true", "--set", "prometheusRule.enabled=true")


def test_dashboards_and_alerts_are_off_by_default(tools: Tools) -> None:
    objects = tools.render()
    assert not by_kind(objects, "PrometheusRule")
    labelled = [o for o in by_kind(objects, "ConfigMap")
                if "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert not labelled


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(tools: Tools) -> None:
    objects = tools.render(*ON, "--set", "dashboards.namespace=monitoring",
                           "--set", "dashboards.annotations.grafana_folder=Mace")
    config_map = one(objects, "ConfigMap", "-dashboards")
    meta = config_map["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["namespace"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "Mace"}
    shipped = {p.name: json.loads(p.read_text()) for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert {name: json.loads(text) for name, text in config_map["data"].items()} == shipped
    dashboard = shipped["mace-latency.json"]
    types = {panel["type"] for panel in dashboard["panels"]}
    assert {"timeseries", "heatmap"} <= types
    assert all(panel["targets"] and all(t["expr"] for t in panel["targets"]) for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_prometheus_rule_renders_the_alerts_with_the_values(tools: Tools) -> None:
    objects = tools.render(*ON, "--set-json", "prometheusRule.p99ThresholdSeconds=0.0005",
                           "--set", "prometheusRule.labels.release=prometheus")
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"MaceProbeLatencyHigh", "MaceProbeNotMeasuring", "MaceAgentDisconnected"}
    assert alerts["MaceProbeLatencyHigh"]["expr"].endswith("> 0.0005")
    assert alerts["MaceProbeLatencyHigh"]["for"] == "10m"
    # Probes no agent runs yet are seen in the operator's phase, the others in their agent's run state.
    assert 'mace_probe_phase{phase=~"Pending|Failed"} == 1' in alerts["MaceProbeNotMeasuring"]["expr"]
    assert 'mace_probe_state{state=~"Attaching|Error"} == 1' in alerts["MaceProbeNotMeasuring"]["expr"]
    assert alerts["MaceProbeNotMeasuring"]["for"] == "10m"


@pytest.mark.parametrize("bad", ["prometheusRule.p99ThresholdSeconds=-1", "prometheusRule.latencyFor=ten",
                                 "dashboards.enabled=maybe", "dashboards.colour=red"])
def test_schema_refuses_bad_values(tools: Tools, bad: str) -> None:
    done = tools.helm_run("template", "mace", str(CHART), "--set", bad, check=False)
    assert done.returncode != 0 and "values don't meet the specifications of the schema" in done.stderr, (
        bad, done.stderr)
