"""How many packets per second a UDP flood through the veth path loses to the engine's hooks.

A single-threaded flood (the lab's udp-flood: Python sendto in a loop, 64-byte payloads) runs
throughout, in one of two directions of the lab topology:

    egress   pod -> node bridge -> uplink -> remote   (received: the remote's eth0 rx counter)
    ingress  remote -> uplink -> node bridge -> pod   (received: the pod's eth0 rx counter; a sink
             receiver in the pod reads the datagrams, and Udp InDatagrams counts what it read)

and the configurations alternate around it in rounds (random order each round), each for one
window: none; empty programs on the engine's hooks; the engine in histogram mode with a
non-matching filter (another process, same device); the engine in histogram mode with a filter
that matches the flood (egress: the flood's process; ingress: the pod's receiver); netqtop, bcc's
per-queue packet counter (Debian's bpfcc-tools), on the outer device: the peer a user would pick
instead, on the same device tracepoints (net_dev_start_xmit, netif_receive_skb), so each loss also
reads against it. netqtop runs in the node namespace (it finds its device under /sys/class/net, so
it needs the device in its own namespace; tracefs and debugfs are mounted in the mount namespace
``ip netns exec`` gives it), compiled against the agent's kernel header tree
(BCC_KERNEL_SOURCE=mace_agent.kernel.kernel_headers()); it is started for each of its windows and
the window begins only after its first report (so it has compiled and attached), and it is ended by
PID after the window. What it counted is kept per window (its report's packets/s): its device-name
filter reads struct net_device through those headers, so on a kernel other than theirs it may count
nothing while still running its programs on every packet. Without netqtop (or headers) that
configuration is skipped with a message. Loss is the
paired drop of the received rate against the same round's no-agent window, in %; the figure is
the median over rounds with a 95% bootstrap interval. The same loss is also given at equal CPU:
from the sending side's CPU time per received packet (the flood process plus ksoftirqd, from
/proc/PID/schedstat; without IRQ time accounting the softirq work of the path is charged to them),
which other processes taking the CPU away during a window do not disturb. A last window per program
set (netqtop's included, read with bpftool), with kernel.bpf_stats_enabled=1 (restored after), gives
the time spent in each program per received packet (on both sides of the path, and including other
traffic through the same hooks). --experiment adds least-work: bench/least_work.c, the least work that
measures the flood's packets (a bound, not a design; see bench/hookctl.py), naming the matching
filter's process.

Run: sudo .venv/bin/python bench/throughput.py [--rounds N] [--seconds S] [--directions egress,ingress]
     [--experiment]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    IMAGES,
    RESULTS,
    BpfStats,
    Estimate,
    HookControl,
    PlotRow,
    Record,
    Samples,
    idle_process,
    machine,
    median,
    ns_counters,
    program_cost,
    require_root,
    svg_intervals,
    tracing_programs,
    udp_mib,
    write_results,
)
from mace_agent.kernel import KernelFeatureError, kernel_headers

from mace_lab.processes import TrafficProcess, filter_text
from mace_lab.topology import Topology

CONFIGS = ("none", "empty", "nonmatch", "match", "netqtop")
EXPERIMENTS = ("least-work",)
COUNTING = ("match", *EXPERIMENTS)
"""Configurations whose program sets count what they measure (kept per window)."""
NETQTOP = Path("/usr/sbin/netqtop-bpfcc")
NETQTOP_INTERVAL_S = 1.0
NETQTOP_READY_S = 90.0
"""How long netqtop may take to compile, attach and print its first report."""
NETQTOP_START_S = 20.0
"""Flood time allowed per netqtop window for its start-up (compile, attach, first report)."""
_WITH_TRACING = ('mount -t debugfs nodev /sys/kernel/debug && mount -t tracefs nodev /sys/kernel/tracing'
                 ' && exec "$@"')
"""netqtop's wrapper: bcc reads tracepoints under debugfs, which the fresh /sys of ``ip netns exec`` lacks
(mounted in that command's own mount namespace only)."""
ECHO_PORT = 7201
SINK_PORT = 7202
GUARD_S = 0.2
TARGET_PCT = 3.0
FIELDS = ["udp_payload"]


def ksoftirqd_pids() -> list[int]:
    """PIDs of the kernel's softirq threads (they take over packet processing under load)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("ksoftirqd/"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def cpu_ns(pids: list[int]) -> int:
    """CPU time used so far by ``pids`` (ns, /proc/PID/schedstat). Without IRQ time accounting, softirq
    work done in a task's context is charged to the task: the flood's path is charged to the flood
    process, or to ksoftirqd when the kernel defers it there."""
    total = 0
    for pid in pids:
        total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def sample(ns: str, dev: str, with_mib: bool, cpu_pids: list[int]) -> Record:
    """Counters of the receiving device (and the namespace's Udp MIB), the CPU time of the sending
    side, and the time they were read."""
    before = time.monotonic_ns()
    counters: Record = ns_counters(ns, dev)
    if with_mib:
        counters["in_datagrams"] = udp_mib(ns)["InDatagrams"]
    counters["cpu_ns"] = cpu_ns(cpu_pids)
    counters["t"] = (before + time.monotonic_ns()) // 2
    return counters


def cpu_per_packet(a: Record, b: Record) -> float:
    """Sending-side CPU ns per received packet between two samples."""
    packets: int = b["rx_packets"] - a["rx_packets"]
    spent: int = b["cpu_ns"] - a["cpu_ns"]
    return spent / packets if packets else float("nan")


def rate(a: Record, b: Record, key: str) -> float:
    """Per-second rate of counter ``key`` between samples ``a`` and ``b``."""
    count: int = b[key] - a[key]
    elapsed_ns: int = b["t"] - a["t"]
    return count * 1e9 / elapsed_ns


def netqtop_env() -> tuple[dict[str, str] | None, str]:
    """The environment netqtop needs here, or None with the reason it cannot run."""
    if not NETQTOP.exists():
        return None, f"{NETQTOP} is missing (apt-get install -y bpfcc-tools)"
    try:
        tree = kernel_headers()
    except KernelFeatureError as error:
        return None, f"no kernel headers for its compile: {error}"
    env = {"PYTHONUNBUFFERED": "1"}  # its reports reach the pipe as they are printed
    if tree is not None:
        env["BCC_KERNEL_SOURCE"] = str(tree)
    return env, f"{NETQTOP}" + (f" with BCC_KERNEL_SOURCE={tree}" if tree is not None else "")


def _netqtop_number(text: str) -> float:
    """A figure as netqtop prints it (``1.5K`` and ``2.1M`` in powers of 1024)."""
    scale = {"K": 1024.0, "M": 1024.0**2}.get(text[-1:], 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def parse_netqtop(item: object) -> tuple[int] | None:
    """The packets/s of one of netqtop's ``Total`` lines (TX, then RX, in each report)."""
    if isinstance(item, str) and item.startswith(" Total"):
        return (round(_netqtop_number(item.split()[-1])),)
    return None


def netqtop_reports(peer: Samples) -> list[dict[str, int]]:
    """Packets/s of each complete report so far: ``{"tx": .., "rx": ..}``."""
    totals = [s[0] for s in list(peer.samples)]  # a copy: its reader thread appends
    return [{"tx": tx, "rx": rx} for tx, rx in zip(totals[::2], totals[1::2], strict=False)]


def start_netqtop(t: Topology, env: dict[str, str]) -> tuple[Samples, float]:
    """netqtop on the uplink, in the node namespace, after its first report (compiled and attached);
    also returns the seconds it took to get there."""
    began = time.monotonic()
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", _WITH_TRACING, "netqtop",
            str(NETQTOP), "-n", t.remote.uplink, "-i", f"{NETQTOP_INTERVAL_S:g}", "-t"]
    peer = Samples(t, t.node, argv, parse_netqtop)
    try:
        peer.wait_samples(2, NETQTOP_READY_S)  # the TX and RX totals of its first report
    except RuntimeError as error:  # it prints its errors on stdout, and exits 0
        out = "\n".join(str(line) for line in peer.snapshot()[-5:])
        peer.kill()
        raise RuntimeError(f"netqtop did not start: {error}\n{out}") from None
    return peer, time.monotonic() - began


def bpftool_stats(pid: int) -> Record:
    """Run counts and times of the programs process ``pid`` has attached, as hookctl's ``stats``."""
    def bpftool(*args: str) -> object:
        return json.loads(subprocess.run(["bpftool", *args, "--json"], capture_output=True, text=True,
                                         timeout=30, check=True).stdout)

    links = bpftool("perf", "list")
    assert isinstance(links, list)
    programs = {}
    for link in links:
        if link.get("pid") == pid:
            prog = bpftool("prog", "show", "id", str(link["prog_id"]))
            assert isinstance(prog, dict)
            programs[f"netqtop:{link.get('tracepoint', prog['name'])}"] = {
                "run_cnt": prog.get("run_cnt", 0), "run_time_ns": prog.get("run_time_ns", 0)}
    return {"programs": programs}


def run_direction(
    t: Topology,
    ctl: HookControl,
    direction: str,
    rounds: int,
    seconds: float,
    idle_pid: int,
    rng: random.Random,
    configs: tuple[str, ...],
    netqtop: dict[str, str] | None,
) -> Record:
    """Alternate ``configs`` around one flood; return per-window received rates.

    ``netqtop``: the environment it runs with (None exactly when it is not among ``configs``).
    """
    startups = (rounds + 1) * (netqtop is not None)  # one per round, one for its profile
    total = rounds * len(configs) * (seconds + 1.5) + startups * NETQTOP_START_S + 60
    # egress: the pod floods a sink in the remote; ingress: the remote floods a sink in the pod,
    # whose reader is the filter's process
    sink_ns, flood_ns, sink_addr = ((t.remote.ns, t.pod.ns, t.remote.ipv4) if direction == "egress"
                                    else (t.pod.ns, t.remote.ns, t.pod.ipv4))
    sink = TrafficProcess(t, sink_ns, "udp-server", "--bind", "0.0.0.0", "--port", str(ECHO_PORT),
                          "--sink-port", str(SINK_PORT))
    sink.wait_ready()
    flood = TrafficProcess(t, flood_ns, "udp-flood", "--dest", sink_addr, "--port", str(SINK_PORT),
                           "--duration", f"{total:.0f}")
    matched_pid = flood.pid if direction == "egress" else sink.pid
    rx_ns = sink_ns
    with_mib = direction == "ingress"
    cpu_pids = [flood.pid, *ksoftirqd_pids()]
    match = filter_text(t.uplink_ifindex, matched_pid, FIELDS, FIELDS)
    program_sets = {
        "empty": ("empty", match),
        "match": ("engine", match),
        "nonmatch": ("engine", filter_text(t.uplink_ifindex, idle_pid, FIELDS, FIELDS)),
        "least-work": ("least-work", match),
    }
    names = {config: f"{direction}:{config}" for config in program_sets if config in configs}
    loads = {}
    for config, set_name in names.items():
        kind, text = program_sets[config]
        loads[config] = ctl.request("load", name=set_name, kind=kind, filter=text)["seconds"]
    windows = []
    matched_so_far: dict[str, int] = {}
    for round_no in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for config in order:
            name = names.get(config)
            if name is not None:
                ctl.attach(name, False)
            peer, peer_start_s = start_netqtop(t, netqtop) if config == "netqtop" and netqtop else (None, 0.0)
            time.sleep(GUARD_S)  # let the queues settle after attaching; not counted
            first = sample(rx_ns, "eth0", with_mib, cpu_pids)
            time.sleep(seconds)  # the measurement window itself
            last = sample(rx_ns, "eth0", with_mib, cpu_pids)
            window: Record = {
                "config": config,
                "round": round_no,
                "rx_pps": rate(first, last, "rx_packets"),
                "rx_dropped_ps": rate(first, last, "rx_dropped"),
                "cpu_ns_per_packet": cpu_per_packet(first, last),
            }
            if with_mib:
                window["read_pps"] = rate(first, last, "in_datagrams")
            if name is not None:
                reply = ctl.request("detach", name=name)
                if config in COUNTING:
                    counted = reply["counters"]["out_count"] + reply["counters"]["in_count"]
                    window["engine_measured"] = counted - matched_so_far.get(config, 0)
                    matched_so_far[config] = counted
            if peer is not None:
                peer.kill()
                window["netqtop_start_s"] = round(peer_start_s, 2)
                window["netqtop_reports_pps"] = netqtop_reports(peer)
            windows.append(window)
    costs = profile(ctl, names, rx_ns, seconds)
    if netqtop is not None:
        costs["netqtop"] = profile_netqtop(t, netqtop, rx_ns, seconds)
    for name in names.values():
        ctl.request("unload", name=name)
    flood.kill()
    return {"windows": windows, "load_seconds": loads, "profile": costs, "configs": list(configs)}


def profile(ctl: HookControl, names: dict[str, str], rx_ns: str, seconds: float) -> Record:
    """Per program set: time spent in its programs per received packet (kernel.bpf_stats_enabled on).

    Less noisy than the paired rates: the programs run in the flood's path, so this time per packet,
    times the packet rate, is the share of a CPU they take from the path.
    """
    found: Record = {}
    with BpfStats():
        for config, name in names.items():
            ctl.attach(name, False)
            before = ctl.request("stats", name=name)
            first = sample(rx_ns, "eth0", False, [])
            time.sleep(seconds)  # the profiled window: every program attached
            last = sample(rx_ns, "eth0", False, [])
            cost = program_cost(before, ctl.request("stats", name=name))
            ctl.request("detach", name=name)
            packets = last["rx_packets"] - first["rx_packets"]
            total_ns = sum(c["ns"] for c in cost.values())
            found[config] = {
                "packets": packets,
                "rx_pps": round(rate(first, last, "rx_packets")),
                "ns_per_packet": round(total_ns / packets, 1) if packets else None,
                "programs": cost,
            }
    return found


def profile_netqtop(t: Topology, env: dict[str, str], rx_ns: str, seconds: float) -> Record:
    """The same for netqtop's programs (run counts from bpftool; bpf_stats turned on before its
    programs load, so their counters run from the start)."""
    with BpfStats():
        peer, _ = start_netqtop(t, env)
        try:
            before = bpftool_stats(peer.pid)
            first = sample(rx_ns, "eth0", False, [])
            time.sleep(seconds)  # the profiled window
            last = sample(rx_ns, "eth0", False, [])
            after = bpftool_stats(peer.pid)
        finally:
            peer.kill()
    cost = program_cost(before, after)
    packets = last["rx_packets"] - first["rx_packets"]
    total_ns = sum(c["ns"] for c in cost.values())
    return {
        "packets": packets,
        "rx_pps": round(rate(first, last, "rx_packets")),
        "ns_per_packet": round(total_ns / packets, 1) if packets else None,
        "programs": cost,
    }


def analyse(raw: Record, rng: random.Random) -> Record:
    """Per configuration: median received rate, and the paired loss against no agent in %."""
    by: dict[tuple[str, int], Record] = {(w["config"], w["round"]): w for w in raw["windows"]}
    rounds = sorted({w["round"] for w in raw["windows"]})
    result: Record = {
        "load_seconds": raw["load_seconds"],
        "configs": {},
        "profile": raw["profile"],
        "windows": raw["windows"],
    }
    for config in raw["configs"]:
        windows = [by[config, r] for r in rounds]
        entry: Record = {
            "rx_pps_median": round(median([w["rx_pps"] for w in windows])),
            "cpu_ns_per_packet_median": round(median([w["cpu_ns_per_packet"] for w in windows])),
        }
        if "read_pps" in windows[0]:
            entry["read_pps_median"] = round(median([w["read_pps"] for w in windows]))
        if config in COUNTING:
            entry["engine_measured_per_window"] = [w.get("engine_measured") for w in windows]
        if config == "netqtop":
            reports = [r for w in windows for r in w["netqtop_reports_pps"]]
            entry["netqtop_counted_pps_median"] = {
                way: round(median([r[way] for r in reports])) if reports else None for way in ("tx", "rx")}
            entry["netqtop_start_s_median"] = median([w["netqtop_start_s"] for w in windows])
        if config != "none":
            for key in ("rx_pps", "read_pps"):
                if key not in windows[0]:
                    continue
                loss = [
                    100 * (1 - by[config, r][key] / by["none", r][key]) for r in rounds if by["none", r][key]
                ]
                entry[f"{key.removesuffix('_pps')}_loss_pct"] = Estimate.of(loss, rng).to_dict()
            # The same loss at equal CPU: how many fewer packets each CPU-second of the sending side
            # carries (robust to other processes taking the CPU away during a window).
            cpu_loss = [
                100 * (1 - by["none", r]["cpu_ns_per_packet"] / by[config, r]["cpu_ns_per_packet"])
                for r in rounds
            ]
            entry["cpu_loss_pct"] = Estimate.of(cpu_loss, rng).to_dict()
        cost = raw["profile"].get(config)
        if cost and cost["ns_per_packet"] is not None:
            entry["program_ns_per_packet"] = cost["ns_per_packet"]
        result["configs"][config] = entry
    return result


def _interval(e: Record | None) -> str:
    return f"{e['median']:+.1f} [{e['ci95'][0]:+.1f}, {e['ci95'][1]:+.1f}]" if e else ""


def _against(mine: float, peer: float, what: str) -> str:
    """``rx met (x0.80)``: whether a loss is no higher than the peer's, and their ratio."""
    ratio = f" (x{mine / peer:.2f})" if mine > 0 and peer > 0 else ""
    return f"{what} {'met' if mine <= peer else 'MISSED'}{ratio}"


def report(results: dict[str, Record]) -> list[str]:
    lines = [
        f"{'direction':<9} {'config':<10} {'rx pps':>7} {'rx loss % [95% CI]':<22} {'CPU ns/pkt':>10} "
        f"{'loss % at equal CPU':<22} {'prog ns/pkt':>11}  target (< {TARGET_PCT:g}%)"
    ]
    for direction, res in results.items():
        peer = res["configs"].get("netqtop")
        for config, entry in res["configs"].items():
            cpu_loss = entry.get("cpu_loss_pct")
            verdict = ""
            if cpu_loss and config in ("nonmatch", "match", *EXPERIMENTS):
                rx_ok = entry["rx_loss_pct"]["median"] < TARGET_PCT
                cpu_ok = cpu_loss["median"] < TARGET_PCT
                verdict = f"rx {'met' if rx_ok else 'MISSED'}, at equal CPU {'met' if cpu_ok else 'MISSED'}"
                if peer:
                    verdict += "; <= netqtop's: " + ", ".join(
                        _against(entry[key]["median"], peer[key]["median"], what)
                        for key, what in (("rx_loss_pct", "rx"), ("cpu_loss_pct", "at equal CPU")))
            rx_loss = _interval(entry.get("rx_loss_pct"))
            programs = f"{entry.get('program_ns_per_packet', ''):>11}"
            lines.append(
                f"{direction:<9} {config:<10} {entry['rx_pps_median']:>7} {rx_loss:<22} "
                f"{entry['cpu_ns_per_packet_median']:>10} {_interval(cpu_loss):<22} {programs}  {verdict}"
            )
            if "netqtop_counted_pps_median" in entry:
                counted = entry["netqtop_counted_pps_median"]
                lines.append(
                    f"{'':<9} {'':<9} netqtop counted tx {counted['tx']}, rx {counted['rx']} packets/s on "
                    f"the uplink (median of its reports); ready {entry['netqtop_start_s_median']:.1f} s "
                    "after its start"
                )
            if "read_pps_median" in entry:
                lines.append(
                    f"{'':<9} {'':<9} pod receiver read {entry['read_pps_median']} datagrams/s, "
                    f"loss {_interval(entry.get('read_loss_pct')) or '-'} %"
                )
    return lines


def plot(results: dict[str, Record], path: Path) -> None:
    rows = []
    for group, (direction, res) in enumerate(results.items()):
        for config, entry in res["configs"].items():
            for key, what in (("rx_loss_pct", "received/s"), ("cpu_loss_pct", "at equal CPU")):
                loss = entry.get(key)
                if loss:
                    label = f"{direction} {config}, {what}"
                    rows.append(PlotRow(label, loss["median"], loss["ci95"][0], loss["ci95"][1], group))
    svg_intervals(
        path,
        "UDP flood: received packets/s lost with the hooks attached (paired rounds, 95% CI)",
        "% of the no-agent rate",
        rows,
        marks=[(TARGET_PCT, "3 %")],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--seconds", type=float, default=0.6, help="window length")
    parser.add_argument("--directions", default="egress,ingress", help="comma-separated: egress, ingress")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--experiment", action="store_true",
                        help="also run least-work, the least work that measures the flood (a bound)")
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--plot", type=Path, default=IMAGES / "throughput.svg")
    args = parser.parse_args()
    directions = [d for d in args.directions.split(",") if d]
    if not directions or not set(directions) <= {"egress", "ingress"}:
        parser.error("--directions takes egress and/or ingress")
    if args.rounds < 2 or args.seconds <= 0:
        parser.error("--rounds must be at least 2 and --seconds positive")
    require_root()
    rng = random.Random(args.seed)
    began = time.monotonic()
    info = machine() | {"tracing_programs_before": tracing_programs()}
    netqtop, how = netqtop_env()
    configs: tuple[str, ...] = (*CONFIGS, *EXPERIMENTS) if args.experiment else CONFIGS
    if netqtop is None:
        print(f"throughput: skipping the netqtop configuration: {how}", file=sys.stderr, flush=True)
        configs = tuple(c for c in configs if c != "netqtop")
        info["netqtop"] = {"skipped": how}
    else:
        info["netqtop"] = {"command": how, "interval_s": NETQTOP_INTERVAL_S}
    results: dict[str, Record] = {}
    for direction in directions:
        print(
            f"{direction}: {args.rounds} rounds x {len(configs)} windows of {args.seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        with Topology(prefix=f"mace-tb{random.randrange(1 << 16):04x}") as t:
            idle = idle_process(t, t.pod.ns)
            ctl = HookControl(t, t.node)
            try:
                raw = run_direction(t, ctl, direction, args.rounds, args.seconds, idle.pid, rng, configs,
                                    netqtop)
            finally:
                ctl.close()
        results[direction] = analyse(raw, rng) | {"attach_refused": ctl.refused}
    info["tracing_programs_after"] = tracing_programs()
    print("\n".join(report(results)))
    write_results("throughput", args.out, info, began, results)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
