"""The latencies the engine reports agree with independent references.

References: a receiver that sleeps a known time before recvmsg (ingress), a TBF rate limit with a filler
burst queued ahead of a probe (egress = the backlog's drain time), kernel timestamps from a packet socket
on the outer device against the client's own timestamps around its calls, and the RTT the application
itself observes (egress + ingress can never exceed it).

Tolerances are deliberately wider than the engine's target (median error under 50 us): the CI machine
has two noisy cores, the references themselves carry scheduling jitter (a Python call and its timestamp
are a few microseconds apart, a sleeping thread wakes late, the TBF watchdog timer fires late), and a
test must not flake. Each assertion names the error it allows and why; medians are used where a single
preempted sample must not fail the test, hard bounds where the physics allows no exception.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest

from mace_lab.events import info_int
from mace_lab.processes import AgentProcess, TrafficProcess, filter_text
from mace_lab.topology import Tbf, Topology
from mace_lab.traffic import FILLER_BASE

pytestmark = pytest.mark.ebpf

PORT = 7001
SINK_PORT = 7002
TCP_PORT = 7003
MS = 1_000_000
US = 1_000

Record = dict[str, Any]


def by_seq(events: list[Record], direction: str, requests: list[Record]) -> dict[int, Record]:
    """The events of ``direction`` whose udp_payload is a request's sequence number, by that number."""
    wanted = {r["seq"] for r in requests}
    found: dict[int, Record] = {}
    for event in events:
        if event["direction"] == direction and (key := info_int(event, "udp_payload")) in wanted:
            assert key not in found, f"{direction} packet {key:#x} reported twice"
            found[key] = event
    return found


def start_udp(t: Topology, *client_args: str, sink: bool = False) -> TrafficProcess:
    """An echo server in the remote and a gated UDP client in the pod (not yet released)."""
    server_args = ["--bind", "::", "--port", str(PORT)] + (["--sink-port", str(SINK_PORT)] if sink else [])
    TrafficProcess(t, t.remote.ns, "udp-server", *server_args).wait_ready()
    return TrafficProcess(t, t.pod.ns, "udp-client", "--port", str(PORT), *client_args, gated=True)


def measure(t: Topology, client: TrafficProcess, fields: list[str], count: int,
            direction: str = "in") -> tuple[list[Record], list[Record]]:
    """Attach the agent to ``client``, run it, wait for ``count`` events of ``direction``."""
    agent = AgentProcess(t, t.node, filter_text(t.uplink_ifindex, client.pid, fields, fields))
    agent.wait_attached()
    client.release()
    requests, done = client.wait_done()
    assert done["received"] == done["sent"], done
    agent.wait_events(lambda e: e["direction"] == direction, count)
    agent.stop()
    return requests, agent.snapshot_events()


def test_ingress_matches_receiver_sleep(topology: Topology) -> None:
    t = topology
    sleep_ms, count = 20, 10
    client = start_udp(t, "--dest", t.remote.ipv4, "--count", str(count), "--rate", "10",
                       "--sleep-ms", str(sleep_ms))
    requests, events = measure(t, client, ["udp_payload"], count)
    inbound = by_seq(events, "in", requests)
    assert sorted(inbound) == sorted(r["seq"] for r in requests)
    ingress, waited, gap = [], [], []
    for r in requests:
        latency = inbound[r["seq"]]["latency_ns"]
        # Hard bound: the reply reached the device after the request entered sendto.
        assert latency <= r["recv_end_ns"] - r["send_start_ns"], r
        ingress.append(latency)
        waited.append(r["recv_end_ns"] - r["send_end_ns"])  # the sleep, its overshoot, then recvmsg
        gap.append(waited[-1] - latency)  # reply transit to the device + recvmsg's return to the client
    detail = f"ingress {ingress}, client waited {waited}"
    print(f"sleep {sleep_ms} ms: median ingress {statistics.median(ingress) / 1e3:.1f} us, "
          f"median gap to the client's wait {statistics.median(gap) / 1e3:.1f} us")
    # Ingress = D + the sleep's overshoot (timer slack and wake-up, 50-100 us here, more on a busy VM)
    # - the reply's transit to the device after sendto returned (about 100 us here). Allow 1 ms under
    # and 2 ms over D at the median.
    assert (sleep_ms - 1) * MS <= statistics.median(ingress) <= (sleep_ms + 2) * MS, detail
    # Tighter: against the client's own wait, the difference is only the reply's transit to the device
    # (about half an idle RTT, tens of us) and recvmsg's return path; allow 500 us at the median.
    assert -20 * US <= statistics.median(gap) <= 500 * US, detail


SEND_CALL_BOUND_NS = 500 * US
"""A send into the TBF queue returns within tens of microseconds; one that took longer had the client
descheduled between reading its clock and entering the call (seen at 3 ms on a loaded machine)."""


def test_egress_matches_tbf_backlog_drain_time(make_topology: Callable[..., Topology]) -> None:
    rate_bps, burst, limit = 8_000_000, 3000, 200_000  # 1 byte per microsecond
    t = make_topology(tbf=Tbf(rate_bps=rate_bps, burst_bytes=burst, limit_bytes=limit))
    filler_count, filler_bytes, probe_bytes, count = 30, 1000, 64, 5
    capture = TrafficProcess(t, t.node, "capture", "--dev", t.remote.uplink, "--port", str(SINK_PORT),
                             "--port", str(PORT), "--duration", "120")
    capture.wait_ready()
    # Rounds 250 ms apart: the ~28 ms backlog drains and the bucket refills (3 ms) in between.
    client = start_udp(t, "--dest", t.remote.ipv4, "--count", str(count), "--rate", "4",
                       "--payload", str(probe_bytes), "--filler-count", str(filler_count),
                       "--filler-bytes", str(filler_bytes), "--filler-port", str(SINK_PORT), sink=True)
    requests, events = measure(t, client, ["udp_payload"], count, direction="out")
    outbound = by_seq(events, "out", requests)
    frame = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: TBF counts whole frames
    queued = filler_count * (filler_bytes + frame) + probe_bytes + frame
    drain_ns = (queued - burst) * 8 * 1_000_000_000 // rate_bps
    # Each round's first filler frame left at once (the bucket was full): its packet-socket timestamp
    # is when the bucket started to empty. The probe leaves when the bucket has refilled enough for
    # everything queued ahead of it and itself: drain_ns later.
    capture.wait_until(lambda: len(first_fillers(capture)) >= count, 10, "captured first fillers")
    starts = sorted(first_fillers(capture))
    left = {f["payload8"]: f["real_ns"] for f in capture.records("payload8") if f["outgoing"]}
    errors, model_errors, unmeasured = [], [], []
    for r, start_real in zip(requests, starts, strict=True):
        if r["send_end_ns"] - r["send_start_ns"] > SEND_CALL_BOUND_NS:
            continue  # the client was descheduled around its send: its clock read is not the call's start
        if r["seq"] not in outbound:  # seen on a loaded machine, before and after 73b004f: 1 round in 11
            unmeasured.append(r["seq"])
            continue
        departed = left[r["seq"]] - r["real_offset_ns"] - r["send_start_ns"]  # the probe's frame left
        errors.append(outbound[r["seq"]]["latency_ns"] - departed)
        model_errors.append(left[r["seq"]] - start_real - drain_ns)  # the device's view of the model
    print(f"TBF drain {drain_ns / 1e3:.0f} us; unmeasured probes {unmeasured}; "
          f"egress vs the probe's departure (us): "
          f"{[round(e / 1e3, 1) for e in errors]}; departure vs model (us): "
          f"{[round(e / 1e3, 1) for e in model_errors]}")
    # The probe's frame leaves once the backlog queued ahead of it has drained, never sooner (tc's rate
    # table rounds by well under a microsecond per frame), and later by the TBF watchdog timer's and
    # the softirq's latency (milliseconds on a loaded machine). The engine's egress ends where the
    # packet socket sees the frame leave: allow 200 us at the median, and no sample early by more than
    # 50 us. Together: egress holds the whole backlog's drain time.
    assert len(unmeasured) <= 1, f"probes {unmeasured} unmeasured"
    assert len(errors) >= 3, f"only {len(errors)} of {count} sends ran undisturbed and were measured"
    assert min(model_errors) >= -50 * US, model_errors
    assert min(errors) >= -50 * US, errors
    assert abs(statistics.median(errors)) <= 200 * US, errors


def first_fillers(capture: TrafficProcess) -> list[int]:
    """Packet-socket timestamps of each round's first filler datagram leaving by the device."""
    return [f["real_ns"] for f in capture.records("payload8")
            if f["outgoing"] and f["payload8"] == FILLER_BASE]


def test_latencies_match_packet_socket_timestamps(topology: Topology) -> None:
    t = topology
    count = 20
    capture = TrafficProcess(t, t.node, "capture", "--dev", t.remote.uplink, "--port", str(PORT),
                             "--duration", "120")
    capture.wait_ready()
    client = start_udp(t, "--dest", t.remote.ipv4, "--count", str(count), "--rate", "20")
    requests, events = measure(t, client, ["udp_payload"], count)
    outbound, inbound = by_seq(events, "out", requests), by_seq(events, "in", requests)
    capture.wait_until(lambda: len(capture.records("payload8")) >= 2 * count, 10, "captured frames")
    frames = capture.records("payload8")
    sent = {f["payload8"]: f["real_ns"] for f in frames if f["outgoing"]}
    arrived = {f["payload8"]: f["real_ns"] for f in frames if not f["outgoing"]}
    out_errors, in_errors = [], []
    for r in requests:
        seq, offset = r["seq"], r["real_offset_ns"]
        # Reference egress: from just before the client's sendto to the device's transmit timestamp.
        out_errors.append(outbound[seq]["latency_ns"] - (sent[seq] - (r["send_start_ns"] + offset)))
        # Reference ingress: from the device's receive timestamp to just after recvmsg returned.
        in_errors.append(inbound[seq]["latency_ns"] - ((r["recv_end_ns"] + offset) - arrived[seq]))
    detail = f"egress errors {out_errors}, ingress errors {in_errors}"
    print(f"packet socket: median error egress {statistics.median(out_errors) / 1e3:.1f} us, "
          f"ingress {statistics.median(in_errors) / 1e3:.1f} us")
    # The references enclose the engine's interval by a Python call's overhead on each side, so the
    # engine reads slightly less. Allow 100 us at the median (target: 50 us on a quiet machine).
    assert abs(statistics.median(out_errors)) <= 100 * US, detail
    assert abs(statistics.median(in_errors)) <= 100 * US, detail


@pytest.mark.parametrize("protocol", ["udp4", "udp6", "tcp4"])
def test_idle_egress_plus_ingress_within_application_rtt(topology: Topology, protocol: str) -> None:
    t = topology
    count = 20
    dest = t.remote.ipv6 if protocol == "udp6" else t.remote.ipv4
    if protocol == "tcp4":
        TrafficProcess(t, t.remote.ns, "tcp-server", "--bind", "::", "--port", str(TCP_PORT)).wait_ready()
        client = TrafficProcess(t, t.pod.ns, "tcp-client", "--dest", dest, "--port", str(TCP_PORT),
                                "--count", str(count), "--rate", "20", gated=True)
        fields = ["tcp_seq"]
    else:
        client = start_udp(t, "--dest", dest, "--count", str(count), "--rate", "20")
        fields = ["udp_payload"]
    requests, events = measure(t, client, fields, count)
    out = [e for e in events if e["direction"] == "out"]
    inbound = [e for e in events if e["direction"] == "in"]
    assert len(out) == len(inbound) == count
    # Events come in order; request i's egress and its reply's ingress pair up by position.
    out.sort(key=lambda e: e["timestamp_ns"])
    inbound.sort(key=lambda e: e["timestamp_ns"])
    for r, o, i in zip(requests, out, inbound, strict=True):
        assert o["latency_ns"] + i["latency_ns"] <= r["rtt_ns"], (r, o, i)
