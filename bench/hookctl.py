"""Bench helper run inside the node namespace: loads eBPF program sets once, then attaches and
detaches them on command, so that configurations can alternate in short rounds without a
recompile (about 1-2 s) between them.

One JSON command per line on stdin, one JSON reply per line on stdout (``{"ok": false,
"error": ...}`` on failure). End of input detaches and unloads everything.

``{"op": "load", "name": N, "kind": KIND, "filter": TEXT}``
    empty: programs whose bodies return 0, on every hook the engine uses for TEXT, of the same
    kinds (tracepoints for system calls, raw tracepoints for the rest); empty-syscalls and
    empty-net: the same on only the system-call hooks, or only the others; empty-rawsys: raw
    tracepoints on every system call's entry and exit instead of the system-call hooks (an
    experiment, not an engine design: see docs/benchmarks.md); least-work: bench/least_work.c (the
    least work that measures the named client's UDP round trips: a bound, not a design) on its hooks
    and empty programs on the engine's others; engine: the engine itself
    (:class:`mace_agent.engine.Engine`) for TEXT. Loaded detached; replies ``seconds``.
``{"op": "attach", "name": N, "stream": bool}``
    Attach N; an engine also gets its output mode and a reader thread running the CLI's loop
    (``poll(0.2)``, each event written as a JSON line, here to /dev/null).
``{"op": "detach", "name": N}``
    Stop the reader, detach N. Replies the engine's counters (``counters``) when N is an engine.
``{"op": "stats", "name": N}``
    Per program: ``run_cnt`` and ``run_time_ns`` from the program's fdinfo (counted while
    ``kernel.bpf_stats_enabled`` is 1).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import program_stats
from mace_agent import kernel
from mace_agent.btf import BTF
from mace_agent.config import EngineConfig
from mace_agent.engine import Engine
from mace_agent.hooks import KernelHooks
from mace_agent.offsets import KernelOffsets

from mace.grammar import parse

Record = dict[str, Any]
POLL_S = 0.2
EMPTY_KINDS: dict[str, Callable[[tuple[str, ...]], tuple[str, ...]]] = {
    "empty": lambda hooks: hooks,
    "empty-syscalls": lambda hooks: tuple(h for h in hooks if h.startswith("syscalls:")),
    "empty-net": lambda hooks: tuple(h for h in hooks if not h.startswith("syscalls:")),
    "empty-rawsys": lambda hooks: ("raw_syscalls:sys_enter", "raw_syscalls:sys_exit"),
}
"""The hooks each kind of empty program set takes, given the engine's for the filter."""
LEAST_WORK = Path(__file__).with_name("least_work.c")
_PROBE_EVENT = re.compile(r"^(?:RAW_)?TRACEPOINT_PROBE\((?:\w+, )?(\w+)\)", re.M)


def least_work_program(hooks: tuple[str, ...]) -> str:
    """C text of bench/least_work.c with the kernel's offsets, and empty programs on the rest of ``hooks``."""
    source = LEAST_WORK.read_text()
    own = set(_PROBE_EVENT.findall(source))
    defines = KernelOffsets.from_btf(BTF.load()).defines()
    prelude = "".join(f"#define {name} {value}\n" for name, value in defines.items())
    return prelude + source + empty_program(tuple(h for h in hooks if h.split(":", 1)[1] not in own))


def empty_program(hooks: tuple[str, ...]) -> str:
    """C text of programs that return 0 on ``hooks`` (``category:event`` names)."""
    lines = []
    for hook in hooks:
        category, event = hook.split(":", 1)
        if category == "syscalls":
            lines.append(f"TRACEPOINT_PROBE({category}, {event}) {{ return 0; }}")
        else:
            lines.append(f"RAW_TRACEPOINT_PROBE({event}) {{ return 0; }}")
    return "\n".join(lines) + "\n"


class Programs:
    """The hooks of one bcc module, detachable and re-attachable without recompiling."""

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self.tracepoints = list(bpf.tracepoint_fds)
        self.raw = list(bpf.raw_tracepoint_fds)

    def detach(self) -> None:
        """Detach every hook that is attached."""
        for tp in self.tracepoints:
            if tp in self.bpf.tracepoint_fds:
                self.bpf.detach_tracepoint(tp)
        for tp in self.raw:
            if tp in self.bpf.raw_tracepoint_fds:
                self.bpf.detach_raw_tracepoint(tp)

    def attach(self) -> None:
        """Attach every hook, or none: a failure (e.g. the kernel's limit of 64 perf-event programs
        per tracepoint, reached by other users) detaches what was attached and raises."""
        try:
            for tp in self.tracepoints:
                if tp not in self.bpf.tracepoint_fds:
                    self.bpf.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))
            for tp in self.raw:
                if tp not in self.bpf.raw_tracepoint_fds:
                    self.bpf.attach_raw_tracepoint(tp=tp, fn_name=b"raw_tracepoint__" + tp)
        except Exception:
            self.detach()
            raise

    def stats(self) -> dict[str, dict[str, int]]:
        """run_cnt and run_time_ns of each loaded program."""
        return program_stats(self.bpf)


class Loaded:
    """One loaded program set: empty programs, or an engine with its reader thread."""

    def __init__(self, kind: str, text: str) -> None:
        flt = parse(text)
        self.kind = kind
        self.engine: Engine | None = None
        if kind in EMPTY_KINDS or kind == "least-work":
            kernel.prepare()
            from bcc import BPF

            # the engine's hooks on this kernel (as NodeEngine.start picks them)
            engine_hooks = KernelHooks.detect(kernel.tracepoint_exists).tracepoints()
            if kind == "least-work":
                bpf = BPF(text=least_work_program(engine_hooks).encode())
                conf = bpf["conf"]
                for index, value in enumerate((flt.proc_id, flt.dev_id, os.stat("/proc/self/ns/net").st_ino)):
                    conf[conf.Key(index)] = conf.Leaf(value)
            else:
                bpf = BPF(text=empty_program(EMPTY_KINDS[kind](engine_hooks)).encode())
            self.programs = Programs(bpf)
        elif kind == "engine":
            self.engine = Engine(flt, EngineConfig(stream=False))
            self.engine.start()
            self.programs = Programs(self.engine.node.bpf)  # the engine has no detach/attach of its own
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.programs.detach()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.events = 0

    def _read(self, engine: Engine) -> None:
        with open(os.devnull, "w") as sink:
            while not self._stop.is_set():
                for event in engine.poll(POLL_S):
                    sink.write(json.dumps(event.to_dict()) + "\n")
                    self.events += 1

    def attach(self, stream: bool) -> None:
        if self.engine is not None:
            self.engine.set_stream(stream)
        self.programs.attach()
        if self.engine is not None:
            self._stop.clear()
            self._reader = threading.Thread(target=self._read, args=(self.engine,), daemon=True)
            self._reader.start()

    def detach(self) -> Record:
        if self._reader is not None:
            self._stop.set()
            self._reader.join()
            self._reader = None
        self.programs.detach()
        if self.kind == "least-work":  # its histograms (egress buckets, then ingress) and sums
            counts = [leaf.value for leaf in self.programs.bpf["hist"].values()]
            out_sum, in_sum = (leaf.value for leaf in self.programs.bpf["sums"].values())
            return {"counters": {"out_count": sum(counts[:64]), "out_sum": out_sum,
                                 "in_count": sum(counts[64:]), "in_sum": in_sum}}
        if self.engine is None:
            return {}
        snap = self.engine.snapshot()
        return {"counters": snap.counters, "events": self.events}

    def close(self) -> None:
        self.detach()
        if self.engine is not None:
            self.engine.close()
        else:
            self.programs.bpf.cleanup()


def handle(loaded: dict[str, Loaded], command: Record) -> Record:
    """Carry out one command and return its reply."""
    op, name = command.get("op"), str(command.get("name"))
    if op == "load":
        began = time.monotonic()
        if name in loaded:
            raise ValueError(f"{name} is already loaded")
        loaded[name] = Loaded(str(command["kind"]), str(command["filter"]))
        return {"seconds": round(time.monotonic() - began, 3)}
    if name not in loaded:
        raise ValueError(f"{name} is not loaded")
    if op == "attach":
        loaded[name].attach(bool(command.get("stream", False)))
        return {}
    if op == "detach":
        return loaded[name].detach()
    if op == "stats":
        return {"programs": loaded[name].programs.stats()}
    if op == "unload":
        loaded.pop(name).close()
        return {}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    """Serve commands from stdin until it closes."""
    loaded: dict[str, Loaded] = {}
    reply: Record
    try:
        for line in sys.stdin:
            try:
                reply = {"ok": True} | handle(loaded, json.loads(line))
            except Exception as error:  # reported to the bench, which stops with the message
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        for item in loaded.values():
            item.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
