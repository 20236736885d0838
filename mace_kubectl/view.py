"""What ``kubectl mace`` draws: rich renderables built from a probe's status and its agent's histograms."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich import box
from rich.bar import Bar
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mace_kubectl.scrape import DIRECTIONS, Histogram

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
LOSS_LABELS = (("unmatched", "unmatched", "unmatched"), ("dropped", "dropped", "dropped"),
               ("rate_limited", "rate-limited", "rateLimited"))
"""(metrics key, label, status.results key) of each loss counter."""


def duration(seconds: float | None) -> str:
    """A latency for people: ``850ns``, ``74.4us``, ``1.23ms``, ``2.50s``; ``-`` for none."""
    if seconds is None or math.isnan(seconds):
        return "-"
    ns = seconds * 1e9
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.2f}s"


def _ns(value: Any) -> float | None:
    return None if value is None else float(value) / 1e9


@dataclass
class Frame:
    """One refresh of ``watch``: the probe object, and what its agent's histograms gained in the interval."""

    probe: dict[str, Any]
    at: datetime
    seconds: float
    interval: Mapping[str, Histogram] = field(default_factory=dict)
    since_start: Mapping[str, Histogram] = field(default_factory=dict)
    loss: Mapping[str, int] = field(default_factory=dict)
    loss_added: Mapping[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def results(self) -> dict[str, Any]:
        results: dict[str, Any] = (self.probe.get("status") or {}).get("results") or {}
        return results


def _title(probe: dict[str, Any], at: datetime, note: str) -> Text:
    meta, spec, status = probe.get("metadata") or {}, probe.get("spec") or {}, probe.get("status") or {}
    results = status.get("results") or {}
    title = Text()
    title.append(f"{meta.get('namespace')}/{meta.get('name')}", style="bold")
    title.append(f"  pod {spec.get('pod')}  node {status.get('node') or '-'}  phase ")
    phase = status.get("phase") or "-"
    title.append(phase, style="green" if phase == "Measuring" else "yellow")
    title.append(f"  agent {results.get('state') or '-'}  {at.strftime('%H:%M:%S')}")
    reason = next((c.get("reason") for c in status.get("conditions") or []
                   if c.get("status") != "True" and c.get("reason")), None)
    if phase != "Measuring" and reason:
        title.append(f"  ({reason})", style="yellow")
    if note:
        title.append(f"  {note}", style="red")
    return title


def _figures(hist: Histogram | None) -> list[str]:
    if hist is None or not hist.count:
        return ["0", *("-" for _ in QUANTILES), "-"]
    return [str(hist.count), *(duration(hist.quantile(q)) for _, q in QUANTILES), "<" + duration(hist.top())]


def latency_table(frame: Frame) -> Table:
    """Count and percentiles per direction over the last interval (the difference of two scrapes of the
    agent's histogram) and since the start (the histogram itself), both interpolated in its log2 buckets."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, caption_justify="left",
                  caption="from the agent's log2 histogram, interpolated in its buckets "
                          "(exact since-start figures: kubectl describe latencyprobe)")
    for name in ("direction", "over", "count", *(q for q, _ in QUANTILES), "max"):
        table.add_column(name, justify="left" if name in ("direction", "over") else "right")
    for direction in DIRECTIONS:
        table.add_row(direction, f"{frame.seconds:.1f}s", *_figures(frame.interval.get(direction)))
        table.add_row("", "start", *_figures(frame.since_start.get(direction)),
                      end_section=direction == DIRECTIONS[0])
    return table


def histogram_table(frame: Frame) -> Table:
    """The log2 latency histogram of the interval (or, if it had no samples, since the start) as bars."""
    source, label = frame.interval, "last interval"
    if not any(h.count for h in source.values()):
        source, label = frame.since_start, "since start"
    rows: dict[tuple[float, float], dict[str, int]] = {}
    for direction, hist in source.items():
        for low, high, n in hist.buckets():
            rows.setdefault((low, high), {})[direction] = n
    used = [bounds for bounds, counts in rows.items() if any(counts.values())]
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, title_justify="left",
                  title=f"latency histogram, {label}")
    table.add_column("bucket", no_wrap=True)
    for direction in DIRECTIONS:
        table.add_column(direction, justify="right")
        table.add_column("", ratio=1)
    if not used:
        return table
    peak = max(max(c.values()) for c in rows.values() if c)
    for bounds in sorted(rows):
        if not used[0] <= bounds <= used[-1]:
            continue
        low, high = bounds
        name = f">{duration(low)}" if math.isinf(high) else f"<{duration(high)}"
        cells: list[RenderableType] = [name]
        for direction in DIRECTIONS:
            n = rows[bounds].get(direction, 0)
            style = "cyan" if direction == "egress" else "magenta"
            cells += [str(n), Bar(size=peak, begin=0, end=n, color=style)]
        table.add_row(*cells)
    return table


def loss_line(frame: Frame) -> Text:
    """The loss counters since the start (the agent's metrics, else the status), and the interval's."""
    text = Text("loss: ")
    for key, label, status_key in LOSS_LABELS:
        total = frame.loss.get(key, frame.results.get(status_key) or 0)
        text.append(f"{label} {total} (+{frame.loss_added.get(key, 0)})  ")
    text.append(f"matched {frame.results.get('matched', 0)}")
    return text


def watch_view(frame: Frame) -> RenderableType:
    """The whole ``watch`` frame."""
    return Group(_title(frame.probe, frame.at, frame.note), latency_table(frame), histogram_table(frame),
                 loss_line(frame))


@dataclass(frozen=True)
class TopRow:
    probe: dict[str, Any]
    rate: float | None


def top_view(rows: Sequence[TopRow], all_namespaces: bool, at: datetime) -> RenderableType:
    """``top``: every probe, one line each."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False,
                  title=f"LatencyProbes  {at.strftime('%H:%M:%S')}", title_justify="left")
    table.caption, table.caption_justify = "out: egress, in: ingress (the agent's exact figures)", "left"
    if all_namespaces:
        table.add_column("namespace", no_wrap=True)
    for name in ("name", "pod", "node", "phase"):
        table.add_column(name, no_wrap=True)
    for name in ("out p50", "out p99", "in p50", "in p99", "samples/s"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len("999.9us"))
    for row in rows:
        meta, spec = row.probe.get("metadata") or {}, row.probe.get("spec") or {}
        status = row.probe.get("status") or {}
        results = status.get("results") or {}
        egress, ingress = results.get("egress") or {}, results.get("ingress") or {}
        cells = [meta.get("namespace", "")] if all_namespaces else []
        cells += [meta.get("name", ""), spec.get("pod", ""), status.get("node") or "-",
                  status.get("phase") or "-",
                  duration(_ns(egress.get("p50Ns"))), duration(_ns(egress.get("p99Ns"))),
                  duration(_ns(ingress.get("p50Ns"))), duration(_ns(ingress.get("p99Ns"))),
                  "-" if row.rate is None else f"{row.rate:.1f}"]
        table.add_row(*cells)
    if not rows:
        table.caption = "no LatencyProbes"
    return table
