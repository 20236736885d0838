"""kubectl mace's reading of an agent's /metrics: the histogram difference of two scrapes and its
percentiles, on Prometheus text as the agent writes it (parsed by prometheus_client)."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from rich.console import Console

from mace_kubectl.cli import Watcher
from mace_kubectl.scrape import Histogram, parse
from mace_kubectl.view import Frame, duration, watch_view

LE = [2.0 ** e / 1e9 for e in range(10, 33)]


def page(egress: dict[int, int], unmatched: int = 0, probe: str = "web") -> str:
    """A /metrics page: one probe whose egress histogram has ``egress[e]`` samples in (2^(e-1), 2^e] ns."""
    lines = ["# HELP mace_probe_state 1 for the state.", "# TYPE mace_probe_state gauge",
             f'mace_probe_state{{namespace="apps",probe="{probe}",state="Measuring"}} 1',
             f'mace_probe_state{{namespace="apps",probe="{probe}",state="Error"}} 0',
             "# HELP mace_probe_latency_seconds Latency.", "# TYPE mace_probe_latency_seconds histogram"]
    total = 0
    for direction, counts in (("egress", egress), ("ingress", {})):
        total = 0
        for e, bound in zip(range(10, 33), LE, strict=True):
            total += counts.get(e, 0)
            lines.append(f'mace_probe_latency_seconds_bucket{{namespace="apps",probe="{probe}",'
                         f'direction="{direction}",le="{bound!r}"}} {total}')
        lines.append(f'mace_probe_latency_seconds_bucket{{namespace="apps",probe="{probe}",'
                     f'direction="{direction}",le="+Inf"}} {total}')
        lines.append(f'mace_probe_latency_seconds_count{{namespace="apps",probe="{probe}",'
                     f'direction="{direction}"}} {total}')
        lines.append(f'mace_probe_latency_seconds_sum{{namespace="apps",probe="{probe}",'
                     f'direction="{direction}"}} 0.5')
    lines += ["# HELP mace_probe_unmatched_total Unmatched.", "# TYPE mace_probe_unmatched_total counter",
              f'mace_probe_unmatched_total{{namespace="apps",probe="{probe}"}} {unmatched}',
              "# TYPE mace_agent_synced gauge", "mace_agent_synced 1"]
    return "\n".join(lines) + "\n"


def test_parse_reads_histograms_loss_counters_and_state() -> None:
    probes = parse(page({17: 3, 18: 1}, unmatched=5))
    metrics = probes[("apps", "web")]
    assert metrics.state == "Measuring"
    assert metrics.loss == {"unmatched": 5}
    assert metrics.latency["egress"].count == 4
    assert metrics.latency["ingress"].count == 0
    assert math.isinf(metrics.latency["egress"].bounds[-1])


def test_interval_is_the_difference_of_two_scrapes() -> None:
    before = parse(page({17: 10}))[("apps", "web")].latency["egress"]
    after = parse(page({17: 10, 20: 4}))[("apps", "web")].latency["egress"]
    interval = after.minus(before)
    assert interval.count == 4
    assert [(low, high) for low, high, n in interval.buckets() if n] == [(2.0 ** 19 / 1e9, 2.0 ** 20 / 1e9)]
    # A restarted run (fewer samples than before) is shown whole, never as negative counts.
    assert before.minus(after) is before


def test_quantiles_interpolate_inside_log2_buckets_like_histogram_quantile() -> None:
    hist = parse(page({17: 50, 18: 50}))[("apps", "web")].latency["egress"]
    low17, high17, high18 = 2.0 ** 16 / 1e9, 2.0 ** 17 / 1e9, 2.0 ** 18 / 1e9
    assert hist.quantile(0.5) == pytest.approx(high17)
    assert hist.quantile(0.25) == pytest.approx(low17 + (high17 - low17) / 2)
    assert hist.quantile(0.99) == pytest.approx(high17 + (high18 - high17) * 0.98)
    assert hist.top() == pytest.approx(high18)
    assert Histogram(hist.bounds, tuple(0.0 for _ in hist.bounds)).quantile(0.5) is None


def test_watch_frame_shows_both_directions_and_the_histogram_bars() -> None:
    before = parse(page({17: 10}))[("apps", "web")]
    after = parse(page({17: 20, 18: 10}, unmatched=2))[("apps", "web")]
    probe = {"metadata": {"namespace": "apps", "name": "web"}, "spec": {"pod": "web-0"},
             "status": {"phase": "Measuring", "node": "n1", "results": {
                 "state": "Measuring", "matched": 30, "egress": {"count": 30, "p50Ns": 90_000}}}}
    frame = Frame(probe=probe, at=datetime(2026, 1, 1), seconds=1.0,
                  interval={d: h.minus(before.latency.get(d)) for d, h in after.latency.items()},
                  since_start=after.latency, loss=after.loss, loss_added={"unmatched": 2})
    console = Console(width=100, no_color=True)
    with console.capture() as captured:
        console.print(watch_view(frame))
    text = captured.get()
    lines = [line.split() for line in text.splitlines()]
    at = next(i for i, words in enumerate(lines) if words[:1] == ["egress"])
    assert lines[at][1:3] == ["1.0s", "20"] and lines[at][3] == duration(2.0 ** 17 / 1e9)
    # Since the start: the median is the 15th of 20 samples in (2^16, 2^17] ns, interpolated.
    assert lines[at + 1][:3] == ["start", "30", duration(2.0 ** 16 / 1e9 * 1.75)]
    assert "<131.1us" in text and "<262.1us" in text  # the two buckets that gained samples
    assert "unmatched 2 (+2)" in text


def test_an_unchanged_scrape_keeps_the_last_interval() -> None:
    """The agent refreshes its figures at its publish interval: a scrape between two refreshes repeats the
    last interval instead of showing an empty one."""
    watcher = Watcher(None, "apps", "web", "mace-system")  # type: ignore[arg-type]  # no API calls here
    scrapes = [parse(page(counts, unmatched=u))[("apps", "web")]
               for counts, u in (({17: 10}, 0), ({17: 10}, 0), ({17: 14}, 1), ({17: 14}, 1), ({17: 20}, 1))]
    seen = []
    for at, metrics in enumerate(scrapes):
        watcher._advance(metrics, float(at))
        seen.append((watcher.interval["egress"].count if watcher.interval else None, watcher.interval_s,
                     watcher.loss_added.get("unmatched")))
    assert seen == [(None, 0.0, None), (None, 0.0, None), (4, 2.0, 1), (4, 2.0, 1), (6, 2.0, 0)]
