"""The node's measurement engine: one eBPF program set for every probe, probes as map entries.

Typical use::

    with NodeEngine(EngineConfig()) as engine:
        probe = engine.add(ProbeSpec(parse(text)))
        while engine.stop_reason(probe) is None:
            engine.poll(0.2)
            for event in probe.take_events():
                ...
        print(engine.snapshot(probe).to_dict())

``start`` compiles and attaches once; :meth:`NodeEngine.add` and :meth:`NodeEngine.remove` only
write map entries (a probe's slot, its flow layouts, its outer device and its targets), so the
other probes' packets in flight are never disturbed. Per packet, Python only reads and decodes
the ring buffer; histograms, counts, sums and maxima are kept in the kernel per probe. Pending
packets that never match are counted as expired once a second by reading the two pending tables
(bounded by ``map_entries``; see pending.py). :class:`Engine` is one probe on its own engine
(``mace-agent run``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from mace.models import ProtocolFilter
from mace.probe import Scope
from mace_agent import histogram, kernel, layout, program
from mace_agent.admission import Admission, socket_ports, write_words
from mace_agent.btf import BTF, BTFError
from mace_agent.cgroups import CgroupError, cgroup_id, cgroup_pids
from mace_agent.config import EngineConfig
from mace_agent.events import Event
from mace_agent.flows import FlowLayout
from mace_agent.hooks import KernelHooks
from mace_agent.kernel import KernelFeatureError
from mace_agent.memory import release_compiler_memory
from mace_agent.offsets import KernelOffsets
from mace_agent.pending import PendingTables
from mace_agent.summary import LatencySummary, Snapshot
from mace_agent.target import Target, TargetError

__all__ = ["Engine", "EngineConfig", "Event", "Measurement", "NodeEngine", "Probe", "ProbeLimitError",
           "ProbeSpec", "Snapshot"]

SWEEP_INTERVAL_S = 1.0
QUARANTINE_FACTOR = 2
"""A freed probe slot is reused only this many TTLs later, once nothing pending can name it."""


class ProbeLimitError(Exception):
    """The node's engine has no room for the probe (slots, devices, layouts or groups full)."""


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as the engine sees it.

    scope ``process``: the filter's proc-id and its threads; ``cgroup``: every process (threads
    and later children included) of the cgroups of ``pids`` (default: proc-id's cgroup).
    """

    filter: ProtocolFilter
    scope: Scope = Scope.process
    pids: tuple[int, ...] = ()
    rate_limit: int = EngineConfig.rate_limit
    stream: bool = True


@dataclass(eq=False)
class Measurement:
    """One slot of the engine's per-probe maps: one target (a cgroup, or the processes of a process
    scope) measured with one pair of flow specs on one outer device. A probe sums the measurements of
    its targets, so probes whose targets overlap (a whole pod and one of its containers) share the
    overlap's; each probe reads them from its own start (its baseline)."""

    key: tuple[Any, ...]
    slot: int
    out: FlowLayout
    inbound: FlowLayout
    layout_ids: tuple[int, int]
    dev_id: int
    dev_slot: int
    target_keys: tuple[int, ...]
    netns: int
    probes: list[Probe] = field(default_factory=list)


@dataclass(eq=False)
class Probe:
    """A probe in the engine: the measurements of its targets, and what user space keeps of it."""

    spec: ProbeSpec
    measurements: tuple[Measurement, ...]
    watch: Target
    exact_values: int
    baseline: dict[str, Any] = field(default_factory=dict)
    values: dict[str, list[int]] = field(default_factory=lambda: {d: [] for d in program.DIRECTIONS})
    events: list[Event] = field(default_factory=list)
    max_events: int = 100_000
    events_lost: int = 0
    rate_limited: int = 0
    """Events this probe's own budget refused (a shared measurement takes the largest budget)."""
    _second: int = -1
    _in_second: int = 0

    @property
    def target_keys(self) -> tuple[int, ...]:
        return tuple(sorted({k for m in self.measurements for k in m.target_keys}))

    @property
    def scope_fallback(self) -> bool:
        """Whether cgroup scope fell back to the processes' TGIDs (no usable cgroup v2 id)."""
        return self.spec.scope is Scope.cgroup and all(k & layout.TGID_KEY for k in self.target_keys)

    def take_events(self) -> list[Event]:
        """Events decoded since the last call (bounded by ``max_events``; the rest are counted lost)."""
        events, self.events = self.events, []
        return events

    def offer(self, event: Event) -> None:
        """An event of one of the probe's measurements: kept within the probe's own budget."""
        second = event.timestamp_ns // 1_000_000_000
        if second != self._second:
            self._second, self._in_second = second, 0
        self._in_second += 1
        if not self.spec.stream or (self.spec.rate_limit and self._in_second > self.spec.rate_limit):
            self.rate_limited += self.spec.stream
            return
        if len(self.events) < self.max_events:
            self.events.append(event)
        else:
            self.events_lost += 1
        values = self.values[event.direction]
        if len(values) < self.exact_values:
            values.append(event.latency_ns)


class _Refcounts:
    """Ids handed out for equal values, freed when the last user lets go."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what = limit, what
        self.ids: dict[Any, int] = {}
        self.users: Counter[Any] = Counter()

    def take(self, value: Any) -> tuple[int, bool]:
        """(id, new) for value."""
        if value in self.ids:
            self.users[value] += 1
            return self.ids[value], False
        free = next((i for i in range(self.limit) if i not in set(self.ids.values())), None)
        if free is None:
            raise ProbeLimitError(f"this node's engine has no room for another {self.what} "
                                  f"(at most {self.limit} at once)")
        self.ids[value] = free
        self.users[value] = 1
        return free, True

    def release(self, value: Any) -> bool:
        """True when value lost its last user (its id is free again)."""
        self.users[value] -= 1
        if self.users[value] > 0:
            return False
        del self.users[value], self.ids[value]
        return True


class _Attached(ABC):
    """A context manager that starts on entry (closing again if that fails) and closes on exit."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class NodeEngine(_Attached):
    """The node's program set; a context manager that attaches on entry and detaches on exit."""

    def __init__(self, config: EngineConfig | None = None, hooks: KernelHooks | None = None) -> None:
        """``hooks``: the optional tracepoints to use (default: those the running kernel has)."""
        self.config = config or EngineConfig()
        problems = self.config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.hooks = hooks
        self.attach_seconds = 0.0
        self.decode_errors = 0
        self._bpf: Any = None
        self._lock = threading.RLock()
        self._measurements: dict[tuple[Any, ...], Measurement] = {}
        self._by_slot: dict[int, Measurement] = {}
        self._free_at: dict[int, float] = {}
        self._layouts = _Refcounts(layout.MAX_LAYOUTS, "flow layout")
        self._devices = _Refcounts(layout.MAX_DEVICES, "outer device")
        self._pending: PendingTables | None = None
        self._admission: Admission | None = None
        self._next_sweep = 0.0
        self._netns = 0
        self._devices_known = False
        self._filter_generation = 0

    # -- life cycle -----------------------------------------------------------------------------

    def program_text(self) -> str:
        """The exact C text handed to bcc on this kernel (needs BTF; attaches nothing)."""
        kernel.ensure_tracing_mounts()
        hooks = self.hooks or KernelHooks.detect(kernel.tracepoint_exists)
        try:
            offsets = KernelOffsets.from_btf(BTF.load())
        except BTFError as error:
            raise KernelFeatureError(f"kernel BTF: {error}") from None
        return program.program(offsets, self.config, hooks)

    def start(self) -> None:
        """Check the kernel, compile the program and attach it (once).

        Raises KernelFeatureError (the kernel lacks something); the engine is then left detached.
        """
        if self._bpf is not None:
            return
        began = time.monotonic()
        kernel.prepare()
        self.hooks = self.hooks or KernelHooks.detect(kernel.tracepoint_exists)
        kernel.require_tracepoints(self.hooks.tracepoints())
        text = self.program_text()
        try:
            from bcc import BPF  # imported late: it is slow and only needed here

            self._bpf = BPF(text=text.encode())
        except Exception as error:  # bcc raises bare Exception for compile and load errors
            self.close()
            raise KernelFeatureError(f"cannot load the eBPF program: {error}") from None
        release_compiler_memory()  # compiled once: clang's and LLVM's pages are not needed again
        self._check_sizes()
        self._netns = kernel.netns_inode()
        self._bpf[b"events"].open_ring_buffer(self._on_event)
        self._pending = PendingTables(self._bpf[b"tx_pending"], self._bpf[b"rx_pending"])
        self._admission = Admission(self._bpf)
        self._admission.refresh_addresses()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        self.attach_seconds = time.monotonic() - began

    def _check_sizes(self) -> None:
        expected = {b"targets": layout.TargetC, b"devices": layout.DeviceC, b"layouts": layout.FlowLayoutC,
                    b"target_filter": layout.TargetFilterC, b"call_gates": layout.CallGateC,
                    b"probes": layout.ProbeC, b"probe_stats": layout.ProbeStatsC,
                    b"group_stats": layout.GroupStatsC, b"rate": layout.RateWindowC}
        for name, cls in expected.items():
            table = self._bpf[name]
            size = ctypes.sizeof(getattr(table, "sLeaf", table.Leaf))  # sLeaf: one CPU's value
            if size != ctypes.sizeof(cls):
                raise KernelFeatureError(f"map {name.decode()} holds {size}-byte values, layout.py "
                                         f"says {ctypes.sizeof(cls)}")

    def _require_admission(self) -> Admission:
        if self._admission is None:
            raise RuntimeError("engine is not started")
        return self._admission

    def _require(self) -> Any:
        if self._bpf is None:
            raise RuntimeError("engine is not started")
        return self._bpf

    def close(self) -> None:
        """Detach every program and free the maps (idempotent)."""
        with self._lock:
            for probe in self.probes():
                probe.watch.close()
            self._measurements.clear()
            self._by_slot.clear()
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    # -- probes ---------------------------------------------------------------------------------

    def probes(self) -> list[Probe]:
        with self._lock:
            return [p for m in self._measurements.values() for p in m.probes]

    def _slot(self) -> int:
        now = time.monotonic()
        used = {m.slot for m in self._measurements.values()}
        for slot in range(self.config.max_probes):
            if slot not in used and self._free_at.get(slot, 0.0) <= now:
                self._free_at.pop(slot, None)
                return slot
        raise ProbeLimitError(f"this node's engine has all its {self.config.max_probes} measurement slots in "
                              "use (a probe takes one per container it measures)")

    def _targets(self, spec: ProbeSpec) -> list[tuple[int, ...]]:
        """The target keys of each of the probe's measurements: one per cgroup, and one for all the
        processes measured by TGID (process scope, or processes without a usable cgroup v2 id)."""
        if spec.scope is Scope.process:
            return [(layout.TGID_KEY | spec.filter.proc_id,)]
        cgroups: set[int] = set()
        processes: set[int] = set()
        for pid in spec.pids or (spec.filter.proc_id,):
            try:
                cgroups.add(cgroup_id(pid))
            except CgroupError:
                processes.add(layout.TGID_KEY | pid)
        return [(key,) for key in sorted(cgroups)] + ([tuple(sorted(processes))] if processes else [])

    def add(self, spec: ProbeSpec) -> Probe:
        """Measure a probe from now on (map writes only; a target measured already with the same flow
        specs and device keeps its slot, which the new probe reads from now on).

        Raises TargetError (no such process or device), ProbeLimitError (no room), KernelFeatureError
        (UDP ingress on a kernel that cannot measure it).
        """
        self._require()
        flt = spec.filter
        out, inbound = FlowLayout.of(flt.outbound), FlowLayout.of(flt.inbound)
        assert self.hooks is not None
        if inbound.transport == 17 and not self.hooks.udp:
            raise KernelFeatureError("this kernel lacks the sock:sock_recv_length tracepoint, "
                                     "which measuring UDP's ingress needs")
        watch = Target(flt.proc_id, flt.dev_id)
        try:
            targets = self._targets(spec)
            with self._lock:
                measurements: list[Measurement] = []
                try:
                    for keys in targets:
                        key = (keys, flt.outbound, flt.inbound, flt.dev_id)
                        measurements.append(self._measurements.get(key)
                                            or self._measure(key, out, inbound, watch.netns_inode))
                except BaseException:
                    for unused in measurements:
                        if not unused.probes:
                            self._release(unused)
                    raise
                probe = Probe(spec, tuple(measurements), watch, self.config.exact_values)
                self._require_admission().admit(socket_ports(_processes(spec)))
                probe.baseline = self._raw(probe.measurements)
                for measurement in measurements:
                    measurement.probes.append(probe)
                    self._write_settings(measurement)
        except BaseException:
            watch.close()
            raise
        return probe

    def _measure(self, key: tuple[Any, ...], out: FlowLayout, inbound: FlowLayout,
                 netns: int) -> Measurement:
        """A new measurement in a free slot, written to the maps (rolled back if it does not fit)."""
        bpf = self._require()
        keys, _out_spec, _in_spec, dev_id = key
        slot = self._slot()
        taken: list[tuple[_Refcounts, Any]] = []
        try:
            dev_slot, _ = self._devices.take(dev_id)
            taken.append((self._devices, dev_id))
            ids = []
            for flow in (out, inbound):
                layout_id, new = self._layouts.take(flow.spec)
                taken.append((self._layouts, flow.spec))
                if new:
                    bpf[b"layouts"][ctypes.c_uint32(layout_id)] = flow.to_c()
                ids.append(layout_id)
            measurement = Measurement(key, slot, out, inbound, (ids[0], ids[1]), dev_id, dev_slot, keys,
                                      netns)
            self._reset_slot(slot)
            self._measurements[key] = measurement
            try:
                self._write_maps(measurement)
            except ProbeLimitError:
                del self._measurements[key]
                self._write_maps(measurement)
                raise
            self._by_slot[slot] = measurement
        except BaseException:
            for refs, value in reversed(taken):
                refs.release(value)
            raise
        return measurement

    def _write_maps(self, measurement: Measurement) -> None:
        self._write_device(measurement.dev_id)
        for key in measurement.target_keys:
            self._write_target(key, measurement.netns)
        self._write_target_filter()

    def remove(self, probe: Probe) -> None:
        """Stop measuring a probe (map writes only; a freed slot is reused after the quarantine)."""
        with self._lock:
            if not any(probe in m.probes for m in probe.measurements):
                return
            probe.watch.close()
            for measurement in probe.measurements:
                measurement.probes.remove(probe)
                if self._bpf is None:
                    continue
                if measurement.probes:
                    self._write_settings(measurement)
                else:
                    self._release(measurement)

    def _release(self, measurement: Measurement) -> None:
        """Free a measurement no probe reads any more: its entries, its slot (after the quarantine),
        its layouts and device."""
        with self._lock:
            del self._measurements[measurement.key]
            self._by_slot.pop(measurement.slot, None)
            self._free_at[measurement.slot] = time.monotonic() + QUARANTINE_FACTOR * self.config.ttl_s
            self._write_maps(measurement)
            if not self._measurements:  # nothing learnt for the targets is needed any more
                self._require_admission().clear_ports()
                self._forget_udp_sockets()
            for flow in (measurement.out, measurement.inbound):
                self._layouts.release(flow.spec)
            self._devices.release(measurement.dev_id)

    def _forget_udp_sockets(self) -> None:
        """Drop the notes of the sockets targets read, and their bits (a program without UDP's
        receive side has neither). Both go: a later target's call on one of those sockets makes its
        notes again and sets its bit with them."""
        assert self.hooks is not None
        if not self.hooks.udp:
            return
        bpf = self._require()
        write_words(bpf[b"udp_sock_bits"], {})
        bpf[b"udp_notes"].clear()

    def set_rate(self, probe: Probe, events_per_second: int) -> None:
        """Change a probe's stream budget (0: none)."""
        if events_per_second < 0:
            raise ValueError("rate limit must be 0 or positive")
        with self._lock:
            probe.spec = replace(probe.spec, rate_limit=events_per_second)
            for measurement in probe.measurements:
                self._write_settings(measurement)

    def set_stream(self, probe: Probe, enabled: bool) -> None:
        """Turn a probe's per-packet event stream on or off (histograms stay on)."""
        with self._lock:
            probe.spec = replace(probe.spec, stream=enabled)
            for measurement in probe.measurements:
                self._write_settings(measurement)

    @property
    def bpf(self) -> Any:
        """The loaded bcc object (the benchmarks detach and re-attach its programs)."""
        return self._require()

    def _write_settings(self, measurement: Measurement) -> None:
        """The slot's stream and budget: on if any of its probes streams, the largest budget (0: none)."""
        streaming = [p.spec for p in measurement.probes if p.spec.stream]
        limits = [s.rate_limit for s in streaming]
        value = layout.ProbeC(rate_limit=0 if 0 in limits else max(limits, default=0),
                              stream=int(bool(streaming)))
        self._require()[b"probes"][ctypes.c_uint32(measurement.slot)] = value

    def _reset_slot(self, slot: int) -> None:
        bpf = self._require()
        index = ctypes.c_uint32(slot)
        bpf[b"probe_stats"][index] = bpf[b"probe_stats"].Leaf()
        bpf[b"hist"][index] = bpf[b"hist"].Leaf()
        bpf[b"rate"][index] = layout.RateWindowC()
        bpf[b"probes"][index] = layout.ProbeC()

    def _write_device(self, ifindex: int) -> None:
        """Write (or delete) a device's entry from the measurements that use it; the device hooks
        go back to reading ifindexes until the next sweep learns every device's address again."""
        self._write_known_devices(layout.KnownDevicesC())
        self._devices_known = False
        table = self._require()[b"devices"]
        users = [m for m in self._measurements.values() if m.dev_id == ifindex]
        key = ctypes.c_uint32(ifindex)
        if not users:
            table.pop(key, None)
            return
        outs = list(dict.fromkeys(m.layout_ids[0] for m in users))
        ins = list(dict.fromkeys(m.layout_ids[1] for m in users))
        if len(outs) > layout.DEV_LAYOUTS or len(ins) > layout.DEV_LAYOUTS:
            raise ProbeLimitError(f"device {ifindex} already carries {layout.DEV_LAYOUTS} different "
                                  "flow specs in one direction")
        value = layout.DeviceC(netns=self._netns, slot=users[0].dev_slot, n_out=len(outs), n_in=len(ins),
                               reads_l2=_reads_l2(users))
        for i, lid in enumerate(outs):
            value.out_layouts[i] = lid
        for i, lid in enumerate(ins):
            value.in_layouts[i] = lid
        table[key] = value

    def _write_target(self, key: int, netns: int) -> None:
        """Write (or delete) a target's entry from the measurements that include it."""
        table = self._require()[b"targets"]
        users = sorted((m for m in self._measurements.values() if key in m.target_keys),
                       key=lambda m: m.slot)
        ckey = ctypes.c_uint64(key)
        if not users:
            table.pop(ckey, None)
            return
        value = layout.TargetC(netns=netns, reads_l2=_reads_l2(users))
        for direction, groups_name, count_name in ((0, "out", "n_out"), (1, "in_", "n_in")):
            groups: dict[tuple[int, int], int] = {}
            for m in users:
                group = (m.layout_ids[direction], m.dev_slot)
                if group in groups:
                    raise ProbeLimitError(f"another probe measures this pod with the same "
                                          f"{program.DIRECTIONS[direction]} flow spec but a different one "
                                          "the other way: give both probes the same flow specs, or "
                                          "other fields")
                groups[group] = m.slot
            if len(groups) > layout.TARGET_GROUPS:
                raise ProbeLimitError(f"this pod already has {layout.TARGET_GROUPS} probes with different "
                                      "flow specs, the most one pod takes")
            array = getattr(value, groups_name)
            for i, ((lid, dev), slot) in enumerate(groups.items()):
                array[i].layout, array[i].dev, array[i].slot = lid, dev, slot
            setattr(value, count_name, len(groups))
        table[ckey] = value

    def _write_target_filter(self) -> None:
        """Rewrite the target filter from every target key, with a new generation (after ``targets``
        got its entries; a bit that stays set never reads as clear while the filter is rewritten)."""
        keys = {k for m in self._measurements.values() for k in m.target_keys}
        self._filter_generation += 1
        value = layout.TargetFilterC(processes=int(any(k & layout.TGID_KEY for k in keys)),
                                     cgroups=int(any(not k & layout.TGID_KEY for k in keys)),
                                     generation=self._filter_generation)
        for index, word in layout.bit_words(layout.target_bit(key) for key in keys).items():
            value.bits[index] = word
        self._require()[b"target_filter"][ctypes.c_uint32(0)] = value

    # -- events ---------------------------------------------------------------------------------

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        if size < ctypes.sizeof(layout.EventC):
            self.decode_errors += 1
            return
        raw = layout.EventC.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(layout.EventC)))
        measurement = self._by_slot.get(raw.probe)
        if measurement is None or raw.direction >= len(program.DIRECTIONS):
            self.decode_errors += measurement is not None
            return
        flow = measurement.out if raw.direction == 0 else measurement.inbound
        event = Event(program.DIRECTIONS[raw.direction], raw.latency, raw.ts_end, raw.pid, raw.tid,
                      flow.decode_info(bytes(raw.info)))
        for probe in measurement.probes:
            probe.offer(event)

    def poll(self, timeout_s: float) -> None:
        """Read the events that arrive within ``timeout_s`` into their probes (see take_events)."""
        bpf = self._require()
        bpf.ring_buffer_poll(max(0, int(timeout_s * 1000)))
        bpf.ring_buffer_consume()  # the kernel wakes the reader only every WAKE_EVERY events
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    # -- what was measured ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Count the pending packets older than the TTL as expired, and those still pending; learn
        the outer devices' addresses once the kernel has seen each."""
        with self._lock:
            if self._pending is not None:
                self._pending.sweep(time.monotonic_ns(), int(self.config.ttl_s * 1e9))
            if self._bpf is not None and not self._devices_known:
                self._learn_devices()
            if self._admission is not None:
                self._admission.refresh_addresses()
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S

    def _learn_devices(self) -> None:
        """Fill known_devices from the devices' entries, if every device has its ``seen`` address."""
        bpf = self._require()
        entries = [entry for _, entry in bpf[b"devices"].items()]
        if len(entries) > layout.KNOWN_DEVICES or not all(entry.seen for entry in entries):
            return
        value = layout.KnownDevicesC(ready=1, n=len(entries))
        for i, entry in enumerate(entries):
            value.dev[i], value.entry[i] = entry.seen, layout.DeviceC.from_buffer_copy(entry)
        self._write_known_devices(value)
        self._devices_known = True

    def _write_known_devices(self, value: layout.KnownDevicesC) -> None:
        """Write known_devices so that no device hook reads a half-written value as ready: an update
        copies the value while the hooks read it, so each write changes the ``ready`` flag alone or
        leaves it off (ready is withdrawn first, and set last)."""
        table = self._require()[b"known_devices"]
        key = ctypes.c_uint32(0)
        current = table[key]
        if current.ready:
            current.ready = 0
            table[key] = current
        ready, value.ready = value.ready, 0
        table[key] = value
        if ready:
            value.ready = ready
            table[key] = value

    def _raw(self, measurements: tuple[Measurement, ...]) -> dict[str, Any]:
        """The summed counters and histograms of a probe's measurements now (what its baseline and
        snapshots read). Ingress packets wait per (device, ingress layout), not per slot: those
        counters are counted once per pair."""
        bpf = self._require()
        assert self._pending is not None
        counts: dict[str, Any] = dict.fromkeys(layout.PROBE_COUNTERS + layout.GROUP_COUNTERS, 0)
        counts["in_expired"] = counts["out_expired"] = 0
        counts["hist"] = [0] * (len(program.DIRECTIONS) * histogram.BUCKETS)
        for m in measurements:
            index = ctypes.c_uint32(m.slot)
            for cpu in bpf[b"probe_stats"][index]:
                _add_counters(counts, cpu, layout.PROBE_COUNTERS)
            counts["out_expired"] += self._pending.tx_expired[m.slot]
            counts["hist"] = [a + int(b) for a, b in zip(counts["hist"], bpf[b"hist"][index].b, strict=True)]
        for dev_slot, in_layout in {(m.dev_slot, m.layout_ids[1]) for m in measurements}:
            group = ctypes.c_uint32(dev_slot * layout.MAX_LAYOUTS + in_layout)
            for cpu in bpf[b"group_stats"][group]:
                _add_counters(counts, cpu, layout.GROUP_COUNTERS)
            counts["in_expired"] += self._pending.rx_expired[(in_layout, dev_slot)]
        return counts

    def snapshot(self, probe: Probe) -> Snapshot:
        """A probe's summaries, histograms and counters since it was added (runs a sweep first)."""
        self.sweep()
        with self._lock:
            now = self._raw(probe.measurements)
            assert self._pending is not None
            out_pending = sum(self._pending.tx_live[m.slot] for m in probe.measurements)
            pairs = {(m.layout_ids[1], m.dev_slot) for m in probe.measurements}
            in_pending = sum(self._pending.rx_live[pair] for pair in pairs)
        base = probe.baseline
        counters = {k: v - base.get(k, 0) for k, v in now.items() if k != "hist"}
        buckets = [a - b for a, b in zip(now["hist"], base["hist"], strict=True)]
        hists = {d: tuple(buckets[i * histogram.BUCKETS:(i + 1) * histogram.BUCKETS])
                 for i, d in enumerate(program.DIRECTIONS)}
        for d in program.DIRECTIONS:  # a maximum cannot be subtracted: bound it by the probe's buckets
            top = max((i for i, n in enumerate(hists[d]) if n), default=None)
            counters[f"{d}_max"] = 0 if top is None else min(now[f"{d}_max"], histogram.bounds(top)[1] - 1) \
                if base[f"{d}_count"] else now[f"{d}_max"]
        counters["rate_limited"] += probe.rate_limited
        counters["out_pending"], counters["in_pending"] = out_pending, in_pending
        counters["out_evicted"] = max(0, counters["out_inserted"] - counters["out_matched"]
                                      - counters["out_expired"] - out_pending)
        counters["in_evicted"] = max(0, counters["in_inserted"] - counters["in_taken"]
                                     - counters["in_expired"] - in_pending)
        counters["decode_errors"] = self.decode_errors
        counters["events_lost"] = probe.events_lost
        summaries = {
            d: LatencySummary.build(counters[f"{d}_count"], counters[f"{d}_sum"], counters[f"{d}_max"],
                                      hists[d], probe.values[d])
            for d in program.DIRECTIONS
        }
        return Snapshot(summaries, hists, counters)

    def stop_reason(self, probe: Probe) -> str | None:
        """``process_exited`` or ``device_removed`` once the probe's target is gone, else None."""
        return probe.watch.gone()


def _processes(spec: ProbeSpec) -> set[int]:
    """The processes a probe measures now: its process, or every process of its pids' cgroups."""
    if spec.scope is Scope.process:
        return {spec.filter.proc_id}
    return {pid for given in spec.pids or (spec.filter.proc_id,) for pid in cgroup_pids(given)}


def _reads_l2(measurements: list[Measurement]) -> int:
    """``layout.READS_L2_OUT | READS_L2_IN`` for the directions whose layouts take Ethernet bytes."""
    return (layout.READS_L2_OUT * any(m.out.reads_l2 for m in measurements)
            | layout.READS_L2_IN * any(m.inbound.reads_l2 for m in measurements))


def _add_counters(total: dict[str, Any], raw: Any, names: tuple[str, ...]) -> None:
    """Add one stats struct's counters (one CPU's, of one slot) to ``total``; ``*_max`` keep the larger."""
    for name, value in layout.counters_of(raw, names).items():
        total[name] = max(total[name], value) if name.endswith("_max") else total[name] + value


class Engine(_Attached):
    """One probe on an engine of its own (``mace-agent run``): start, poll, snapshot, close."""

    def __init__(self, flt: ProtocolFilter, config: EngineConfig | None = None,
                 hooks: KernelHooks | None = None, scope: Scope = Scope.process) -> None:
        self.filter = flt
        self.config = config or EngineConfig()
        self.node = NodeEngine(self.config, hooks)
        self._spec = ProbeSpec(flt, scope, rate_limit=self.config.rate_limit, stream=self.config.stream)
        self.probe: Probe | None = None
        self.attach_seconds = 0.0

    def start(self) -> None:
        """Compile, attach and add the probe (TargetError, KernelFeatureError: left detached)."""
        began = time.monotonic()
        self.node.start()
        try:
            self.probe = self.node.add(self._spec)
        except (TargetError, ProbeLimitError, KernelFeatureError):
            self.close()
            raise
        self.attach_seconds = time.monotonic() - began

    def _probe(self) -> Probe:
        if self.probe is None:
            raise RuntimeError("engine is not started")
        return self.probe

    def poll(self, timeout_s: float) -> list[Event]:
        """Events that arrived within ``timeout_s`` seconds (empty when the stream is off)."""
        self.node.poll(timeout_s)
        return self._probe().take_events()

    def snapshot(self) -> Snapshot:
        return self.node.snapshot(self._probe())

    def set_stream(self, enabled: bool) -> None:
        self.node.set_stream(self._probe(), enabled)

    def stop_reason(self) -> str | None:
        return self.node.stop_reason(self.probe) if self.probe is not None else None

    def close(self) -> None:
        self.probe = None
        self.node.close()

