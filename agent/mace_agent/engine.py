"""The measurement engine: one eBPF program per Protocol Filter, and what it measured.

Typical use::

    with Engine(parse(text), EngineConfig(stream=True)) as engine:
        while engine.stop_reason() is None:
            for event in engine.poll(0.2):
                ...
        print(engine.snapshot().to_dict())

Per packet, Python only reads and decodes the ring buffer; histograms, counts, sums and
maxima are kept in the kernel. Pending packets that never match are counted as expired here,
once a second, by reading the two pending tables (bounded by ``map_entries``; see pending.py).
"""

from __future__ import annotations

import ctypes
import time
from types import TracebackType
from typing import Any

from mace.models import ProtocolFilter
from mace_agent import codegen, histogram, kernel
from mace_agent.btf import BTF, BTFError
from mace_agent.config import EngineConfig
from mace_agent.events import Event, EventDecoder
from mace_agent.kernel import KernelFeatureError
from mace_agent.pending import PendingTable
from mace_agent.summary import DirectionSummary, Snapshot
from mace_agent.target import Target

__all__ = ["Engine", "EngineConfig", "Event", "Snapshot"]

SWEEP_INTERVAL_S = 1.0
_PENDING_MAPS = (("out", b"tx_pending"), ("in", b"rx_pending"))


class Engine:
    """Measures one filter's packets; a context manager that attaches on entry, detaches on exit."""

    def __init__(self, flt: ProtocolFilter, config: EngineConfig | None = None,
                 hooks: codegen.KernelHooks | None = None) -> None:
        """``hooks``: the optional tracepoints to use (default: those the running kernel has)."""
        self.filter = flt
        self.config = config or EngineConfig()
        self._hooks = hooks
        problems = self.config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.attach_seconds = 0.0
        self._bpf: Any = None
        self._target: Target | None = None
        self._decoder = EventDecoder(flt)
        self._events: list[Event] = []
        self._values: dict[str, list[int]] = {d: [] for d in codegen.DIRECTIONS}
        self._pending_tables: dict[str, PendingTable] = {}
        self._decode_errors = 0
        self._next_sweep = 0.0
        self._callback: Any = None

    def start(self) -> None:
        """Check the kernel and target, compile the program for this filter and attach it.

        Raises KernelFeatureError (kernel lacks something), TargetError (no such process or
        device); the engine is then left detached.
        """
        if self._bpf is not None:
            return
        began = time.monotonic()
        kernel.prepare()
        hooks = self._hooks or codegen.KernelHooks.detect(kernel.tracepoint_exists)
        kernel.require_tracepoints(codegen.tracepoints(self.filter, hooks))
        self._target = Target(self.filter.proc_id, self.filter.dev_id)
        try:
            offsets = codegen.KernelOffsets.from_btf(BTF.load())
        except BTFError as error:
            self.close()
            raise KernelFeatureError(f"kernel BTF: {error}") from None
        namespaces = codegen.Namespaces(agent=kernel.netns_inode(), process=self._target.netns_inode)
        text = codegen.program(self.filter, offsets, namespaces, self.config, hooks)
        try:
            from bcc import BPF  # imported late: it is slow and only needed here

            self._bpf = BPF(text=text.encode())
        except Exception as error:  # bcc raises bare Exception for compile and load errors
            self.close()
            raise KernelFeatureError(f"cannot load the eBPF program: {error}") from None
        self.set_stream(self.config.stream)
        self.set_rate_limit(self.config.rate_limit)
        self._callback = self._bpf[b"events"].open_ring_buffer(self._on_event)
        self._pending_tables = {direction: PendingTable(self._bpf[name]) for direction, name in _PENDING_MAPS}
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        self.attach_seconds = time.monotonic() - began

    def __enter__(self) -> Engine:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _require(self) -> Any:
        if self._bpf is None:
            raise RuntimeError("engine is not started")
        return self._bpf

    def _set_control(self, index: int, value: int) -> None:
        table = self._require()[b"control"]
        table[ctypes.c_int(index)] = ctypes.c_uint64(value)

    def set_stream(self, enabled: bool) -> None:
        """Turn the per-packet event stream on or off (histograms stay on)."""
        self._set_control(codegen.CONTROL_STREAM, int(enabled))

    def set_rate_limit(self, events_per_second: int) -> None:
        """Change the stream's rate limit (0: none)."""
        if events_per_second < 0:
            raise ValueError("rate limit must be 0 or positive")
        self._set_control(codegen.CONTROL_RATE, events_per_second)

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        try:
            event = self._decoder.decode(ctypes.string_at(data, size))
        except ValueError:
            self._decode_errors += 1
            return
        self._events.append(event)
        values = self._values[event.direction]
        if len(values) < self.config.exact_values:
            values.append(event.latency_ns)

    def poll(self, timeout_s: float) -> list[Event]:
        """Events that arrived within ``timeout_s`` seconds (empty when the stream is off)."""
        bpf = self._require()
        bpf.ring_buffer_poll(max(0, int(timeout_s * 1000)))
        bpf.ring_buffer_consume()  # the kernel wakes the reader only every WAKE_EVERY events
        if time.monotonic() >= self._next_sweep:
            self.sweep()
        events, self._events = self._events, []
        return events

    def sweep(self) -> None:
        """Count the pending packets older than the TTL as expired, and those still pending."""
        self._require()
        now = time.monotonic_ns()
        ttl_ns = int(self.config.ttl_s * 1e9)
        for table in self._pending_tables.values():
            table.sweep(now, ttl_ns)
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S

    def _counters(self) -> dict[str, int]:
        table = self._require()[b"counters"]
        counters = {}
        for i, name in enumerate(codegen.COUNTERS):
            per_cpu = [int(v) for v in table.getvalue(ctypes.c_int(i))]
            counters[name] = max(per_cpu) if name.endswith("_max") else sum(per_cpu)
        return counters

    def _histograms(self) -> dict[str, tuple[int, ...]]:
        table = self._require()[b"hist"]
        counts = [sum(int(v) for v in table.getvalue(ctypes.c_int(i)))
                  for i in range(len(codegen.DIRECTIONS) * histogram.BUCKETS)]
        return {d: tuple(counts[i * histogram.BUCKETS:(i + 1) * histogram.BUCKETS])
                for i, d in enumerate(codegen.DIRECTIONS)}

    def snapshot(self) -> Snapshot:
        """Summaries, histograms and counters now (runs a sweep first)."""
        self.sweep()
        counters = self._counters()
        hists = self._histograms()
        for d, table in self._pending_tables.items():
            counters[f"{d}_expired"] = table.expired
            counters[f"{d}_pending"] = table.pending
            counters[f"{d}_evicted"] = max(0, counters[f"{d}_inserted"] - counters[f"{d}_matched"]
                                           - table.expired - table.pending)
        counters["decode_errors"] = self._decode_errors
        summaries = {
            d: DirectionSummary.build(counters[f"{d}_count"], counters[f"{d}_sum"], counters[f"{d}_max"],
                                      hists[d], self._values[d])
            for d in codegen.DIRECTIONS
        }
        return Snapshot(summaries, hists, counters)

    def stop_reason(self) -> str | None:
        """``process_exited`` or ``device_removed`` once the target is gone, else None."""
        return self._target.gone() if self._target is not None else None

    def close(self) -> None:
        """Detach every program and free the maps (idempotent)."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        if self._target is not None:
            self._target.close()
            self._target = None
