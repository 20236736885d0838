"""How close the engine's latencies are to independent references.

The agent runs as users run it (``mace-agent run``, stream mode, in the node namespace of the lab
topology) on the lab's UDP client in a pod, which talks to an echo server in the remote
namespace through the node's uplink. A packet socket on the uplink (the lab's capture) gives
kernel timestamps of each frame there.

1. Ingress vs a receiver that sleeps D ms after sendto, before recvmsg. References: the nominal
   D, and the exact one, from the reply's packet-socket arrival on the uplink to the client's own
   timestamp after recvmsg returned.
2. Egress vs a TBF backlog: a TBF (8 Mbit/s, 3000-byte burst) on the uplink, N 1000-byte filler
   datagrams sent just before each probe. References: the model (the round's first filler
   leaves at once; the probe leaves when the bucket has drained everything ahead of it, (bytes
   queued - burst) * 8 / rate later), and the probe's own packet-socket departure.
3. The MACE paper's check: the pod's RTT minus its egress and ingress latencies (the time spent
   outside the node's virtual path) against the node namespace's own RTT to the same remote,
   measured at the same time by a second client in the node namespace; idle, under a UDP flood
   from a second pod through the same bridge and uplink, and under CPU load (two busy loops in
   the second pod's namespace). Once with the agent streaming per-packet events (RTT minus the
   probe's own egress and ingress) and once in histogram mode (median RTT minus the p50s of its
   summary): the engine's own cost lands in the RTT outside the intervals it measures, more so when
   streaming. Also counts probes whose egress + ingress exceeded their RTT (stream mode).

Run: sudo .venv/bin/python bench/accuracy.py [--probes N]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import (
    IMAGES,
    RESULTS,
    Estimate,
    PlotRow,
    Record,
    machine,
    median,
    quantile,
    require_root,
    svg_intervals,
    tracing_programs,
    write_results,
)

from mace_lab.events import info_int
from mace_lab.processes import AgentProcess, Child, TrafficProcess, filter_text
from mace_lab.topology import Tbf, Topology
from mace_lab.traffic import FILLER_BASE

PORT = 7301
SINK_PORT = 7302
FIELDS = ["udp_payload"]
TARGET_US = 50.0
TBF = Tbf(rate_bps=8_000_000, burst_bytes=3000, limit_bytes=400_000)
FRAME = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: TBF counts whole frames
BUSY_LOOP = "while True: pass"


def measured(
    t: Topology, client: TrafficProcess, direction: str, count: int, others: Sequence[TrafficProcess] = ()
) -> tuple[list[Record], dict[int, Record], dict[int, Record]]:
    """Attach the agent to the (gated) client, release it and ``others``; return its requests and the
    agent's out and in events keyed by the udp_payload sequence number."""
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, client.pid, FIELDS, FIELDS))
    agent.wait_attached()
    client.release()
    for other in others:
        other.release()
    requests, _ = client.wait_done(timeout=120)
    answered = sum(1 for r in requests if "rtt_ns" in r)
    agent.wait_events(
        lambda e: e["direction"] == direction, min(count, answered), timeout=30, allow_exit=True
    )
    agent.stop()
    events: dict[str, dict[int, Record]] = {"out": {}, "in": {}}
    for event in agent.snapshot_events():
        events[event["direction"]][info_int(event, "udp_payload")] = event
    return [r for r in requests if "rtt_ns" in r], events["out"], events["in"]


def frames(capture: TrafficProcess, outgoing: bool, since_real: int) -> dict[int, int]:
    """First 8 payload bytes -> packet-socket timestamp (CLOCK_REALTIME) of frames after ``since_real``."""
    return {
        f["payload8"]: f["real_ns"]
        for f in capture.records("payload8")
        if f["outgoing"] == outgoing and f["real_ns"] >= since_real
    }


def wait_frames(capture: TrafficProcess, outgoing: bool, since_real: int, count: int) -> dict[int, int]:
    """:func:`frames` once at least ``count`` such frames were captured."""
    capture.wait_until(
        lambda: len(frames(capture, outgoing, since_real)) >= count, 10, f"{count} captured frames"
    )
    return frames(capture, outgoing, since_real)


def summary(errors_ns: Sequence[float], rng: random.Random) -> Record:
    """Median error with its interval, and the spread, in microseconds."""
    return {
        "median_error_us": Estimate.of(errors_ns, rng).scaled(1e-3).to_dict(),
        "p10_us": round(quantile(errors_ns, 0.1) / 1e3, 1),
        "p90_us": round(quantile(errors_ns, 0.9) / 1e3, 1),
    }


def udp_client(t: Topology, ns: str, probes: int, rate: float, seq_base: int, *extra: str) -> TrafficProcess:
    """The lab's UDP client in ``ns`` (gated), sending ``probes`` requests to the remote's echo server."""
    return TrafficProcess(t, ns, "udp-client", "--dest", t.remote.ipv4, "--port", str(PORT),
                          "--count", str(probes), "--rate", f"{rate:g}", "--seq-base", str(seq_base), *extra,
                          gated=True)


def ingress_vs_sleep(
    t: Topology, capture: TrafficProcess, sleeps_ms: Sequence[float], probes: int, rng: random.Random
) -> Record:
    results: Record = {}
    for i, sleep_ms in enumerate(sleeps_ms):
        base = (i + 1) * 1_000_000
        since = time.time_ns()
        client = udp_client(t, t.pod.ns, probes, 10, base, "--sleep-ms", f"{sleep_ms:g}")
        requests, _, inbound = measured(t, client, "in", probes)
        arrived = wait_frames(capture, False, since, len(requests))
        vs_nominal, vs_device, latencies = [], [], []
        for r in requests:
            event = inbound.get(r["seq"])
            if event is None or r["seq"] not in arrived:
                continue
            latency = event["latency_ns"]
            latencies.append(latency)
            vs_nominal.append(latency - sleep_ms * 1e6)
            vs_device.append(latency - (r["recv_end_ns"] + r["real_offset_ns"] - arrived[r["seq"]]))
        results[f"{sleep_ms:g}ms"] = {
            "probes": len(latencies),
            "median_ingress_us": round(median(latencies) / 1e3, 1),
            "vs_nominal": summary(vs_nominal, rng),
            "vs_device": summary(vs_device, rng),
        }
    return results


def egress_vs_tbf(
    t: Topology, capture: TrafficProcess, fillers: Sequence[int], probes: int, rng: random.Random
) -> Record:
    results: Record = {}
    t.set_tbf(t.remote.uplink, TBF)
    try:
        for i, count in enumerate(fillers):
            base = (i + 1) * 10_000_000
            since = time.time_ns()
            queued = count * (1000 + FRAME) + 64 + FRAME
            drain_ns = (queued - TBF.burst_bytes) * 8 * 1_000_000_000 // TBF.rate_bps
            # Rounds far enough apart for the backlog to drain and the bucket to refill in between.
            rate = min(10.0, 1e9 / (2 * drain_ns + 20_000_000))
            client = udp_client(t, t.pod.ns, probes, round(rate, 2), base, "--payload", "64",
                                "--filler-count", str(count), "--filler-bytes", "1000",
                                "--filler-port", str(SINK_PORT))
            requests, outbound, _ = measured(t, client, "out", probes)
            left = wait_frames(capture, True, since, len(requests))
            starts = sorted(
                f["real_ns"]
                for f in capture.records("payload8")
                if f["outgoing"] and f["payload8"] == FILLER_BASE and f["real_ns"] >= since
            )
            vs_model, vs_device, latencies = [], [], []
            for r in requests:
                event = outbound.get(r["seq"])
                # The round's first filler left after the round began and before the probe was sent.
                begun = r["filler_start_ns"] + r["real_offset_ns"]
                start = next((s for s in starts if s >= begun), None)
                if event is None or start is None or r["seq"] not in left:
                    continue
                latency = event["latency_ns"]
                latencies.append(latency)
                vs_model.append(latency - (start - r["real_offset_ns"] + drain_ns - r["send_start_ns"]))
                vs_device.append(latency - (left[r["seq"]] - r["real_offset_ns"] - r["send_start_ns"]))
            results[f"{count}x1000B"] = {
                "probes": len(latencies),
                "drain_us": round(drain_ns / 1e3, 1),
                "median_egress_us": round(median(latencies) / 1e3, 1),
                "vs_model": summary(vs_model, rng),
                "vs_device": summary(vs_device, rng),
            }
    finally:
        t.clear_qdisc(t.remote.uplink)
    return results


def start_load(t: Topology, condition: str) -> list[Child]:
    """Background load in the second pod's namespace."""
    other = t.pods[1].ns
    if condition == "udp-flood":
        flood = TrafficProcess(
            t, other, "udp-flood", "--dest", t.remote.ipv4, "--port", str(SINK_PORT), "--duration", "300"
        )
        return [flood]
    if condition == "cpu-load":
        return [Child(t, other, [sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    return []


def paper_method(
    t: Topology, conditions: Sequence[str], probes: int, rate: float, rng: random.Random
) -> Record:
    """Per load condition and output mode: the pod's RTT minus its path latencies against the node's RTT.

    stream: per probe, RTT - egress - ingress (paired by sequence number). histogram (--no-stream):
    median RTT - p50 egress - p50 ingress from the agent's summary. The two modes differ in what the
    engine itself adds to the RTT outside the intervals it measures.
    """
    results: Record = {}
    run = 0
    for condition in conditions:
        for mode in ("stream", "histogram"):
            run += 1
            load = start_load(t, condition)
            try:
                base = run * 100_000_000
                client = udp_client(t, t.pod.ns, probes, rate, base, "--timeout", "1")
                node = udp_client(t, t.node, probes, rate, base + 50_000_000, "--timeout", "1")
                if mode == "stream":
                    requests, outbound, inbound = measured(t, client, "in", probes, others=[node])
                    summary_ = None
                else:
                    requests, summary_ = measured_histogram(t, client, others=[node])
                node_requests, _ = node.wait_done(timeout=120)
            finally:
                for child in load:
                    child.kill()
            node_rtts = [r["rtt_ns"] for r in node_requests if "rtt_ns" in r]
            if summary_ is None:
                entry = per_probe(requests, outbound, inbound)
            else:
                path_ns = summary_["out"]["p50_ns"] + summary_["in"]["p50_ns"]
                rtts = [r["rtt_ns"] for r in requests]
                entry = {
                    "probes": len(rtts),
                    "residual": [rtt - path_ns for rtt in rtts],
                    "rtts": rtts,
                    "path": [path_ns],
                    "exceeded": None,
                }
            low, high = _difference_ci(entry["residual"], node_rtts, rng)
            results[f"{condition}, {mode}"] = {
                "probes": entry["probes"],
                "node_probes": len(node_rtts),
                "pod_rtt_us": round(median(entry["rtts"]) / 1e3, 1),
                "egress_plus_ingress_us": round(median(entry["path"]) / 1e3, 1),
                "pod_rtt_minus_path_us": round(median(entry["residual"]) / 1e3, 1),
                "node_rtt_us": round(median(node_rtts) / 1e3, 1),
                "difference_us": {
                    "median": round((median(entry["residual"]) - median(node_rtts)) / 1e3, 1),
                    "ci95": [round(low / 1e3, 1), round(high / 1e3, 1)],
                },
                "path_exceeded_rtt": entry["exceeded"],
            }
    return results


def per_probe(requests: list[Record], outbound: dict[int, Record], inbound: dict[int, Record]) -> Record:
    """Per probe with both events: RTT, egress + ingress, the rest; how often the path exceeded the RTT."""
    residual, path, rtts, exceeded = [], [], [], 0
    for r in requests:
        out, back = outbound.get(r["seq"]), inbound.get(r["seq"])
        if out is None or back is None:
            continue
        stack = out["latency_ns"] + back["latency_ns"]
        exceeded += stack > r["rtt_ns"]
        residual.append(r["rtt_ns"] - stack)
        path.append(stack)
        rtts.append(r["rtt_ns"])
    return {"probes": len(residual), "residual": residual, "path": path, "rtts": rtts, "exceeded": exceeded}


def measured_histogram(
    t: Topology, client: TrafficProcess, others: Sequence[TrafficProcess] = ()
) -> tuple[list[Record], Record]:
    """Like :func:`measured` with the agent in histogram mode: the client's answered requests and the
    agent's summary."""
    agent = AgentProcess(
        t, t.node, filter_text(t.uplink_ifindex, client.pid, FIELDS, FIELDS), extra_args=["--no-stream"]
    )
    agent.wait_attached()
    client.release()
    for other in others:
        other.release()
    requests, _ = client.wait_done(timeout=120)
    return [r for r in requests if "rtt_ns" in r], agent.stop()


def _difference_ci(
    a: Sequence[float], b: Sequence[float], rng: random.Random, reps: int = 2000
) -> tuple[float, float]:
    """95% bootstrap interval of median(a) - median(b) (independent samples)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    diffs = sorted(
        median([a[rng.randrange(len(a))] for _ in a]) - median([b[rng.randrange(len(b))] for _ in b])
        for _ in range(reps)
    )
    return quantile(diffs, 0.025), quantile(diffs, 0.975)


def report(results: Record) -> list[str]:
    lines = ["1. ingress vs receiver sleep D (error = engine - reference; median [95% CI], p10..p90)"]
    for key, r in results["ingress_vs_sleep"].items():
        nominal, device = r["vs_nominal"], r["vs_device"]
        lines.append(
            f"   D={key:<6} n={r['probes']:<3} ingress {r['median_ingress_us']:>9.1f} us | vs D "
            f"{_est(nominal)} | vs packet socket {_est(device)} | target < {TARGET_US:g} us: "
            f"{_verdict(device)}"
        )
    lines.append("2. egress vs TBF backlog drain")
    for key, r in results["egress_vs_tbf"].items():
        model, device = r["vs_model"], r["vs_device"]
        lines.append(
            f"   {key:<9} n={r['probes']:<3} drain {r['drain_us']:>8.1f} us "
            f"egress {r['median_egress_us']:>8.1f} us | vs model {_est(model)} | "
            f"vs packet socket {_est(device)} | target < {TARGET_US:g} us: "
            f"{_verdict(model)}"
        )
    lines.append("3. paper method: pod RTT - (egress + ingress) vs node RTT (medians)")
    for key, r in results["paper_method"].items():
        d = r["difference_us"]
        exceeded = "-" if r["path_exceeded_rtt"] is None else r["path_exceeded_rtt"]
        lines.append(
            f"   {key:<20} n={r['probes']:<4} pod RTT {r['pod_rtt_us']:>7.1f} us, egress+ingress "
            f"{r['egress_plus_ingress_us']:>7.1f} us, residual {r['pod_rtt_minus_path_us']:>7.1f} us vs "
            f"node RTT {r['node_rtt_us']:>7.1f} us: {d['median']:+.1f} [{d['ci95'][0]:+.1f}, "
            f"{d['ci95'][1]:+.1f}] us; egress+ingress > RTT: {exceeded}"
        )
    return lines


def _est(s: Record) -> str:
    e = s["median_error_us"]
    spread = f"({s['p10_us']:+.0f}..{s['p90_us']:+.0f})"
    return f"{e['median']:+.1f} [{e['ci95'][0]:+.1f}, {e['ci95'][1]:+.1f}] {spread} us"


def _verdict(s: Record) -> str:
    return "met" if abs(s["median_error_us"]["median"]) < TARGET_US else "MISSED"


def plot(results: Record, path: Path) -> None:
    rows = []
    for key, r in results["ingress_vs_sleep"].items():
        e = r["vs_device"]["median_error_us"]
        rows.append(
            PlotRow(f"ingress, sleep {key} (vs packet socket)", e["median"], e["ci95"][0], e["ci95"][1], 0)
        )
    for key, r in results["egress_vs_tbf"].items():
        e = r["vs_model"]["median_error_us"]
        rows.append(
            PlotRow(f"egress, TBF {key} (vs drain model)", e["median"], e["ci95"][0], e["ci95"][1], 1)
        )
    for key, r in results["paper_method"].items():
        d = r["difference_us"]
        rows.append(PlotRow(f"residual - node RTT, {key}", d["median"], d["ci95"][0], d["ci95"][1], 2))
    svg_intervals(
        path,
        "Engine latency minus reference (median, 95% CI)",
        "microseconds",
        rows,
        marks=[(-TARGET_US, "-50 us"), (TARGET_US, "+50 us")],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=20, help="probes per controlled delay")
    parser.add_argument("--sleeps-ms", default="1,5,20", help="receiver sleeps, comma-separated")
    parser.add_argument("--fillers", default="10,30,60", help="filler datagrams ahead of each probe")
    parser.add_argument("--paper-probes", type=int, default=500, help="probes per load condition")
    parser.add_argument("--paper-rate", type=float, default=100.0, help="probes/s per client in part 3")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    parser.add_argument("--plot", type=Path, default=IMAGES / "accuracy.svg")
    args = parser.parse_args()
    try:
        sleeps = [float(s) for s in args.sleeps_ms.split(",") if s]
        fillers = [int(f) for f in args.fillers.split(",") if f]
    except ValueError:
        parser.error("--sleeps-ms and --fillers take comma-separated numbers")
    if args.probes < 2 or args.paper_probes < 2 or args.paper_rate <= 0 or min(fillers, default=1) < 1:
        parser.error("probe counts must be at least 2, the rate positive, filler counts at least 1")
    require_root()
    rng = random.Random(args.seed)
    began = time.monotonic()
    info = machine() | {"tracing_programs_before": tracing_programs()}
    results: Record = {}
    with Topology(pods=2, prefix=f"mace-tb{random.randrange(1 << 16):04x}") as t:
        TrafficProcess(
            t,
            t.remote.ns,
            "udp-server",
            "--bind",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--sink-port",
            str(SINK_PORT),
        ).wait_ready()
        capture = TrafficProcess(
            t,
            t.node,
            "capture",
            "--dev",
            t.remote.uplink,
            "--port",
            str(PORT),
            "--port",
            str(SINK_PORT),
            "--duration",
            "900",
            "--count",
            "1000000",
        )
        capture.wait_ready()
        print("1. ingress vs receiver sleep", file=sys.stderr, flush=True)
        results["ingress_vs_sleep"] = ingress_vs_sleep(t, capture, sleeps, args.probes, rng)
        print("2. egress vs TBF backlog", file=sys.stderr, flush=True)
        results["egress_vs_tbf"] = egress_vs_tbf(t, capture, fillers, args.probes, rng)
        capture.kill()
        print("3. paper method", file=sys.stderr, flush=True)
        results["paper_method"] = paper_method(
            t, ("idle", "udp-flood", "cpu-load"), args.paper_probes, args.paper_rate, rng
        )
    info["tracing_programs_after"] = tracing_programs()
    print("\n".join(report(results)))
    write_results("accuracy", args.out, info, began, results)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
