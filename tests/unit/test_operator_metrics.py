"""The operator's /metrics: one mace_probe_phase series per probe and phase, read at scrape time, served
over real HTTP with the process's own metrics."""

from __future__ import annotations

import asyncio
import urllib.request

from mace_operator.metrics import MetricsServer, ProbePhases, listen, metrics_registry, probe_phase
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

PHASES = {"Pending", "Measuring", "Failed", "Completed"}


def phase_samples(text: str) -> dict[tuple[str, str, str], float]:
    """(namespace, probe, phase) -> value of every mace_probe_phase sample on a page."""
    return {(s.labels["namespace"], s.labels["probe"], s.labels["phase"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "mace_probe_phase"
            for s in family.samples}


def test_one_series_per_phase_with_one_for_the_current_phase() -> None:
    probes = {("apps", "stuck"): ["Pending"], ("apps", "fine"): ["Measuring"], ("web", "bad"): ["Failed"]}
    phases = ProbePhases(probes)
    samples = phase_samples(generate_latest(metrics_registry(phases)).decode())
    assert len(samples) == 3 * len(PHASES)
    for (namespace, name), (current,) in probes.items():
        assert {p: samples[namespace, name, p] for p in PHASES} == {p: float(p == current) for p in PHASES}
    # Read at scrape time: a probe gone from the index is gone from the next page, a new phase shows.
    del probes["web", "bad"]
    probes["apps", "stuck"] = ["Measuring"]
    samples = phase_samples(generate_latest(metrics_registry(phases)).decode())
    assert {key[:2] for key in samples} == {("apps", "stuck"), ("apps", "fine")}
    assert samples["apps", "stuck", "Measuring"] == 1 and samples["apps", "stuck", "Pending"] == 0


def test_no_probes_no_series() -> None:
    assert phase_samples(generate_latest(metrics_registry(ProbePhases())).decode()) == {}


def test_index_entry_is_the_phase_pending_before_any_and_none_once_deleting() -> None:
    assert probe_phase("apps", "p", {"phase": "Failed"}, {}) == {("apps", "p"): "Failed"}
    assert probe_phase("apps", "p", {}, {}) == {("apps", "p"): "Pending"}
    deleting = {"deletionTimestamp": "2026-12-02T10:00:00Z"}
    assert probe_phase("apps", "p", {"phase": "Measuring"}, deleting) is None


def test_served_over_http_as_text_or_openmetrics() -> None:
    sock = listen("127.0.0.1:0")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    server = MetricsServer(sock, metrics_registry(ProbePhases({("apps", "stuck"): ["Pending"]})))

    def get(accept: str) -> tuple[str, str]:
        request = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Content-Type"], response.read().decode()

    async def scrape() -> list[tuple[str, str]]:
        await server.start()
        try:
            return [await asyncio.to_thread(get, accept)
                    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0")]
        finally:
            await server.stop()

    (text_type, text), (open_type, open_text) = asyncio.run(scrape())
    assert text_type.startswith("text/plain; version=0.0.4")
    assert 'mace_probe_phase{namespace="apps",phase="Pending",probe="stuck"} 1.0' in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert open_type.startswith("application/openmetrics-text")
    assert open_text.rstrip().endswith("# EOF")
