"""``kubectl-mace`` (``kubectl mace``): watch a probe, list every probe, measure a pod for a while."""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.rule import Rule

from mace.probe import API_VERSION, KIND
from mace_kubectl import scrape
from mace_kubectl.kube import Agent, Forbidden, Kube, PluginError
from mace_kubectl.view import Frame, TopRow, duration, top_view, watch_view

TICK_S = 1.0
DRAW_S = 0.2
DEFAULT_AGENT_NAMESPACE = "mace-system"
MEASURE_LABEL = {"app.kubernetes.io/managed-by": "kubectl-mace"}
DELETE_WAIT_S = 20.0
STOP_MARGIN_S = 60
"""A measure with --duration S creates its probe with durationSeconds S + this."""
ERROR_GRACE_S = 10.0
"""A measure whose agent reports Error for this long gives up (with the agent's message)."""
MEASURE_WAIT_S = 60.0
"""How long ``measure --duration`` waits for an agent to measure its probe."""
FLOWS = {
    "icmp": ({"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]},
             {"corr": ["icmp_id", "icmp_seq"], "info": ["icmp_seq"]}),
    "udp": ({"corr": ["udp_src_port", "udp_payload"], "info": ["udp_src_port"]},
            {"corr": ["udp_dst_port", "udp_payload"], "info": ["udp_dst_port"]}),
    "tcp": ({"corr": ["tcp_src_port", "tcp_seq"], "info": ["tcp_seq"]},
            {"corr": ["tcp_dst_port", "tcp_seq"], "info": ["tcp_seq"]}),
}
"""(in, out) flow specs per protocol: corr fields that identify one packet of the pod at both events."""


class Watcher:
    """Makes ``watch`` frames: the probe from the API server, its agent's histograms through pods/proxy.

    The agent refreshes its figures at its publish interval (``agent.publishIntervalSeconds``), which may
    be longer than a frame: a frame's interval is the difference between the last two scrapes that
    differed, over the time between them.
    """

    def __init__(self, kube: Kube, namespace: str, name: str, agent_namespace: str) -> None:
        self.kube, self.namespace, self.name, self.agent_namespace = kube, namespace, name, agent_namespace
        self.agent: Agent | None = None
        self.node: str | None = None
        self.previous: scrape.ProbeMetrics | None = None
        self.changed_at = time.monotonic()
        self.interval: dict[str, scrape.Histogram] = {}
        self.interval_s = 0.0
        self.loss_added: dict[str, int] = {}

    def _metrics(self, probe: dict[str, Any]) -> scrape.ProbeMetrics | None:
        node = (probe.get("status") or {}).get("node")
        if not node:
            return None
        if self.agent is None or node != self.node:
            self.agent, self.node, self.previous = self.kube.agent(self.agent_namespace, node), node, None
        page = scrape.parse(self.kube.agent_get(self.agent, "/metrics"))
        return page.get((self.namespace, self.name))

    def _advance(self, metrics: scrape.ProbeMetrics, now: float) -> None:
        before = self.previous
        if before is None:
            self.interval, self.interval_s, self.loss_added = {}, 0.0, {}
        elif metrics.latency == before.latency and metrics.loss == before.loss:
            return  # the agent has not refreshed its figures since the last scrape
        else:
            self.interval = {d: h.minus(before.latency.get(d)) for d, h in metrics.latency.items()}
            self.loss_added = {k: max(0, v - before.loss.get(k, 0)) for k, v in metrics.loss.items()}
            self.interval_s = now - self.changed_at
        self.previous, self.changed_at = metrics, now

    def frame(self) -> Frame:
        """The next frame (raises :class:`PluginError` if the probe is gone or access is refused)."""
        probe = self.kube.probe(self.namespace, self.name)
        note = ""
        try:
            metrics = self._metrics(probe)
        except Forbidden:
            raise
        except PluginError as error:
            metrics, note = None, f"agent: {error}"
        frame = Frame(probe=probe, at=datetime.now().astimezone(), seconds=self.interval_s, note=note)
        if metrics is not None:
            self._advance(metrics, time.monotonic())
            frame.seconds, frame.interval, frame.loss_added = self.interval_s, self.interval, self.loss_added
            frame.since_start, frame.loss = metrics.latency, metrics.loss
        elif not note and not (probe.get("status") or {}).get("node"):
            frame.note = "waiting for the operator to place the probe on a node"
        return frame

    def frame_view(self) -> RenderableType:
        return watch_view(self.frame())


@contextmanager
def keys() -> Iterator[Callable[[float], str | None]]:
    """A function that waits up to N seconds for a key press (None if none); the terminal is in cbreak
    mode meanwhile (Ctrl-C still interrupts). Without a terminal on stdin it only waits."""
    if not sys.stdin.isatty():
        yield lambda timeout: time.sleep(timeout) or None  # type: ignore[func-returns-value]
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def show(console: Console, render: Callable[[], RenderableType], plain: bool, frames: int | None,
         tick: float, until: Callable[[], float] | None = None) -> int:
    """Draw ``render()`` every ``tick`` seconds: as ``frames`` plain-text frames (all until ``until`` if
    None), or as a live full-screen view that ends on ``q`` (or once the monotonic time ``until()``
    returns has passed)."""
    if plain:
        shown, next_at = 0, time.monotonic() + tick
        while (frames is None or shown < frames) and (until is None or time.monotonic() < until()):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += tick
            shown += 1
            view = render()
            console.print(Rule(f"frame {shown}" + (f"/{frames}" if frames else ""), style="dim"))
            console.print(view)
        return 0
    with Live(console=console, screen=True, auto_refresh=False) as live, keys() as key:
        view, next_at = render(), time.monotonic() + tick
        while until is None or time.monotonic() < until():
            live.update(view, refresh=True)
            if (key(DRAW_S) or "").lower() == "q":
                return 0
            if time.monotonic() >= next_at:
                view, next_at = render(), time.monotonic() + tick
    return 0


def _console(args: argparse.Namespace) -> tuple[Console, bool]:
    plain = args.frames is not None or not sys.stdout.isatty()
    console = Console(highlight=False, no_color=plain or None, force_terminal=False if plain else None)
    return console, plain


def cmd_watch(kube: Kube, args: argparse.Namespace) -> int:
    namespace = args.namespace or kube.default_namespace
    if args.events:
        return stream_events(kube, namespace, args.probe, args.agent_namespace, args.frames)
    watcher = Watcher(kube, namespace, args.probe, args.agent_namespace)
    watcher.frame()  # fails now, not inside the view, if the probe or the permissions are missing
    console, plain = _console(args)
    return show(console, watcher.frame_view, plain, args.frames, args.interval)


def event_line(line: str) -> str:
    """One ``/events`` NDJSON record as a readable line."""
    event = json.loads(line)
    direction = {"out": "egress", "in": "ingress"}.get(event.get("direction"), str(event.get("direction")))
    info = " ".join(f"{k}={v}" for k, v in (event.get("info") or {}).items())
    stamp = datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]
    latency = duration(event["latency_ns"] / 1e9) if isinstance(event.get("latency_ns"), int) else "-"
    return f"{stamp}  {direction:<7}  {latency:>9}  pid {event.get('proc_id', '-')}  {info}".rstrip()


def stream_events(kube: Kube, namespace: str, name: str, agent_namespace: str, limit: int | None) -> int:
    probe = kube.probe(namespace, name)
    node = (probe.get("status") or {}).get("node")
    if not node:
        raise PluginError(f"latencyprobe {namespace}/{name} has no node yet (phase "
                          f"{(probe.get('status') or {}).get('phase') or 'unknown'}): nothing to stream")
    agent = kube.agent(agent_namespace, node)
    query = [("probe", f"{namespace}/{name}")] + ([("limit", str(limit))] if limit else [])
    for line in kube.agent_lines(agent, "/events", query):
        print(event_line(line), flush=True)
    return 0


def cmd_top(kube: Kube, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else (args.namespace or kube.default_namespace)
    seen: dict[str, tuple[datetime, int, float | None]] = {}

    def rate(probe: dict[str, Any]) -> float | None:
        """Samples per second between the agent's last two status writes; before a second one, since
        counting began (``results.since``)."""
        results = (probe.get("status") or {}).get("results") or {}
        updated, since = _time(results.get("updated")), _time(results.get("since"))
        matched, uid = int(results.get("matched") or 0), probe["metadata"].get("uid", "")
        if updated is None:
            return None
        before = seen.get(uid)
        if before and updated > before[0] and matched >= before[1]:
            found: float | None = (matched - before[1]) / (updated - before[0]).total_seconds()
        elif before:
            found = before[2]
        else:
            found = matched / (updated - since).total_seconds() if since and updated > since else None
        if not before or updated > before[0]:
            seen[uid] = (updated, matched, found)
        return found

    def render() -> RenderableType:
        probes = sorted(kube.probes(namespace), key=lambda p: (p["metadata"].get("namespace", ""),
                                                              p["metadata"]["name"]))
        for gone in seen.keys() - {p["metadata"].get("uid", "") for p in probes}:
            del seen[gone]
        return top_view([TopRow(p, rate(p)) for p in probes], namespace is None, datetime.now().astimezone())

    render()
    console, plain = _console(args)
    return show(console, render, plain, args.frames, args.interval)


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def probe_body(name: str, pod: str, protocol: str, port: int | None, container: str | None,
               duration_s: int | None) -> dict[str, Any]:
    """The LatencyProbe ``name`` that ``measure`` creates for ``pod``."""
    inbound, outbound = FLOWS[protocol]
    spec: dict[str, Any] = {"pod": pod, "in": inbound, "out": outbound}
    if container:
        spec["container"] = container
    if duration_s:  # a safety net: should the plugin be killed, the probe still stops measuring
        spec["durationSeconds"] = duration_s + STOP_MARGIN_S
    annotations = {"mace.dev/measure": f"{protocol}" + (f" port {port}" if port else "")}
    return {"apiVersion": API_VERSION, "kind": KIND, "spec": spec,
            "metadata": {"name": name, "labels": MEASURE_LABEL, "annotations": annotations}}


def cmd_measure(kube: Kube, args: argparse.Namespace) -> int:
    namespace = args.namespace or kube.default_namespace
    pod = kube.pod(namespace, args.pod)
    containers = [c.name for c in pod.spec.containers or []]
    if args.container and args.container not in containers:
        raise PluginError(f'pod {namespace}/{args.pod} has no container "{args.container}" '
                          f"(it has: {', '.join(containers)})")
    protocol, port = ("icmp", None) if args.icmp else ("udp", args.udp) if args.udp else ("tcp", args.tcp)
    # Named here, not by the API server (generateName): a Ctrl-C during the create still knows what to delete.
    name = f"measure-{args.pod[:40].rstrip('-.')}-{secrets.token_hex(3)}"
    created = False
    try:
        body = probe_body(name, args.pod, protocol, port, args.container, args.duration)
        kube.create_probe(namespace, body)
        created = True
        print(f"created latencyprobe {namespace}/{name}", file=sys.stderr, flush=True)
        watcher = Watcher(kube, namespace, name, args.agent_namespace)

        error_since: list[float] = []

        def render() -> RenderableType:
            frame = watcher.frame()
            status = frame.probe.get("status") or {}
            if status.get("phase") == "Failed":
                reasons = [f"{c.get('reason')}: {c.get('message')}" for c in status.get("conditions") or []
                           if c.get("status") == "False"]
                raise PluginError(f"latencyprobe {namespace}/{name} failed: {'; '.join(reasons[:1])}")
            # An agent error that outlasts the operator's re-resolve (a restarted container) ends the measure.
            if frame.results.get("state") == "Error":
                error_since[:] = error_since or [time.monotonic()]
                if time.monotonic() - error_since[0] >= ERROR_GRACE_S:
                    raise PluginError(f"latencyprobe {namespace}/{name}: its agent reports an error: "
                                      f"{frame.results.get('message') or 'no message'}")
            else:
                error_since.clear()
            if clock is not None:
                clock.saw(frame, f"latencyprobe {namespace}/{name}")
            return watch_view(frame)

        clock = MeasureClock(args.duration) if args.duration else None
        console, plain = _console(args)
        return show(console, render, plain, args.frames, args.interval, clock.until if clock else None)
    finally:
        _remove(kube, namespace, name, created)


class MeasureClock:
    """``measure --duration S``: S seconds from the first frame with the agent's figures (the probe's
    ``durationSeconds`` counts from Measuring too); a probe no agent measures within
    :data:`MEASURE_WAIT_S` ends the measure with its phase and reason."""

    def __init__(self, duration_s: int) -> None:
        self.duration_s, self.created = duration_s, time.monotonic()
        self.started: float | None = None

    def saw(self, frame: Frame, probe: str) -> None:
        """Note ``frame``; raises :class:`PluginError` once the wait for an agent is over."""
        now = time.monotonic()
        if self.started is None and frame.since_start:
            self.started = now
        elif self.started is None and now - self.created > MEASURE_WAIT_S:
            status = frame.probe.get("status") or {}
            why = [f"{c.get('reason')}: {c.get('message')}" for c in status.get("conditions") or []
                   if c.get("status") == "False"]
            raise PluginError(f"{probe} is not measured after {MEASURE_WAIT_S:.0f} s (phase "
                              f"{status.get('phase') or '-'}{'; ' + why[0] if why else ''})")

    def until(self) -> float:
        """When the measure ends (a monotonic time; infinite while no agent measures)."""
        return math.inf if self.started is None else self.started + self.duration_s


def _remove(kube: Kube, namespace: str, name: str, created: bool) -> None:
    """Delete the measure's probe (``created``: known to exist) and wait until it is gone; Ctrl-C cannot
    interrupt this, and a failure is reported without hiding the error that ended the measure."""
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        try:
            deleted = kube.delete_probe(namespace, name)
        except PluginError as error:
            if created:
                print(f"kubectl mace: latencyprobe {namespace}/{name} was not deleted: {error}",
                      file=sys.stderr)
            return
        if not (deleted or created):
            return  # interrupted before the API server created it
        deadline = time.monotonic() + DELETE_WAIT_S
        while kube.probe_exists(namespace, name):
            if time.monotonic() > deadline:
                print(f"latencyprobe {namespace}/{name} is still being deleted (its agent has not "
                      "stopped yet)", file=sys.stderr)
                return
            time.sleep(0.2)
        print(f"deleted latencyprobe {namespace}/{name}", file=sys.stderr, flush=True)
    except PluginError as error:
        print(f"kubectl mace: could not check that latencyprobe {namespace}/{name} is gone: {error}",
              file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.2 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.2 and 3600 seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number, 1..65535")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("--agent-namespace", default=os.environ.get("MACE_AGENT_NAMESPACE",
                                                                    DEFAULT_AGENT_NAMESPACE),
                        help="namespace of the Mace agents (default: $MACE_AGENT_NAMESPACE or mace-system)")
    common.add_argument("--frames", type=_positive, metavar="N",
                        help="print N frames as plain text and exit (for scripts)")
    common.add_argument("--interval", type=_seconds, default=TICK_S, metavar="S",
                        help="seconds between frames (default 1; the agent refreshes its figures at its "
                             "publish interval)")
    top = argparse.ArgumentParser(prog="kubectl mace", description="Live views of Mace LatencyProbes.")
    sub = top.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", parents=[common], help="a probe's latencies, refreshed every second")
    watch.add_argument("probe", help="LatencyProbe name")
    watch.add_argument("-n", "--namespace", help="the probe's namespace (default: the context's)")
    watch.add_argument("--events", action="store_true",
                       help="stream the per-packet events as lines instead (--frames N: stop after N)")
    watch.set_defaults(run=cmd_watch)
    listing = sub.add_parser("top", parents=[common], help="every probe in a refreshing table")
    scope = listing.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="probes of this namespace (default: the context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="probes of every namespace")
    listing.set_defaults(run=cmd_top)
    measure = sub.add_parser("measure", parents=[common],
                             help="measure a pod with a probe of its own, deleted at the end or on Ctrl-C")
    measure.add_argument("pod", help="pod to measure")
    measure.add_argument("-n", "--namespace", help="the pod's namespace (default: the context's)")
    proto = measure.add_mutually_exclusive_group(required=True)
    proto.add_argument("--icmp", action="store_true", help="ICMP echo (ping) over IPv4")
    proto.add_argument("--udp", type=_port, metavar="PORT", help="UDP request/response with peer port PORT")
    proto.add_argument("--tcp", type=_port, metavar="PORT", help="TCP data segments with peer port PORT")
    measure.add_argument("--container", help="only this container's processes (default: all)")
    measure.add_argument("--duration", type=_positive, metavar="S",
                         help="stop after S seconds of measuring (waits up to 60 s for its agent)")
    measure.set_defaults(run=cmd_measure)
    return top


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kubectl-mace``; exit status 0, 1 on an error, 2 on bad usage, 130 on Ctrl-C."""
    # Also where SIGINT was inherited as ignored (a background job): Ctrl-C must still end and clean up.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    args = parser().parse_args(argv)
    try:
        status: int = args.run(Kube(args.kubeconfig, args.context), args)
        return status
    except PluginError as error:
        print(f"kubectl mace: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
