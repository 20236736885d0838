"""The eBPF program handed to bcc: a generated prelude, then agent/bpf/mace.c.

The prelude holds what the node fixes when the agent starts: the shared structs
(:mod:`mace_agent.layout`), the kernel's struct offsets (:mod:`mace_agent.offsets`), the kernel's
optional hooks (:mod:`mace_agent.hooks`), map sizes and the VXLAN ports. Nothing in it depends on
a probe: probes are map entries. ``mace-agent run --print-program`` prints the whole text.
"""

from __future__ import annotations

import ctypes
import os
from importlib import resources

from mace_agent import histogram, layout
from mace_agent.config import EngineConfig
from mace_agent.hooks import KernelHooks
from mace_agent.offsets import KernelOffsets

DIRECTIONS = ("out", "in")


def vxlan_test(ports: tuple[int, ...]) -> str:
    """The C expression behind ``VXLAN_PORT(port)``: whether a UDP destination port is VXLAN's."""
    return "(" + (" || ".join(f"(port) == {p}" for p in sorted(set(ports))) or "0") + ")"


def wake_every(config: EngineConfig) -> int:
    """Events a CPU submits before it wakes the reader: together the CPUs fill at most a quarter
    of the ring buffer between wake-ups (a record is the event plus an 8-byte header)."""
    record = ctypes.sizeof(layout.EventC) + 8
    cpus = os.cpu_count() or 1
    return max(1, config.ringbuf_pages * int(os.sysconf("SC_PAGE_SIZE")) // (4 * record * cpus))


def prelude(offsets: KernelOffsets, config: EngineConfig, hooks: KernelHooks) -> str:
    """The generated C definitions that set up mace.c for this node and kernel."""
    defines: dict[str, object] = {
        "PROBE_SLOTS": config.max_probes, "MAX_TARGETS": layout.MAX_TARGETS,
        "MAX_DEVICES": layout.MAX_DEVICES, "MAX_LAYOUTS": layout.MAX_LAYOUTS,
        "DEV_LAYOUTS": layout.DEV_LAYOUTS, "KNOWN_DEVICES": layout.KNOWN_DEVICES,
        "TARGET_GROUPS": layout.TARGET_GROUPS,
        "CORR_BYTES": layout.CORR_BYTES, "CORR_PIECES": layout.CORR_PIECES,
        "INFO_BYTES": layout.INFO_BYTES, "INFO_PIECES": layout.INFO_PIECES,
        "PKT_BYTES": layout.PKT_BYTES, "L2_BYTES": layout.L2_BYTES,
        "NO_TCP_SEQ": layout.NO_TCP_SEQ, "L4_SOURCE": layout.L4_SOURCE,
        "TGID_KEY": f"{layout.TGID_KEY}ULL", "TARGET_BITS_LOG2": layout.TARGET_BITS_LOG2,
        "TARGET_HASH": f"{layout.TARGET_HASH:#x}ULL",
        "GATE_SLOTS_LOG2": layout.GATE_SLOTS_LOG2, "GATE_HASH": f"{layout.GATE_HASH:#x}U",
        "PORT_WORDS": layout.PORT_WORDS, "NODE_ADDRESSES": layout.NODE_ADDRESSES,
        "RX_SLOTS": layout.RX_SLOTS, "TCP_CHAIN": layout.TCP_CHAIN, "PENDING_WAYS": layout.PENDING_WAYS,
        "MAP_ENTRIES": config.map_entries, "UDP_SOCKETS": config.udp_sockets,
        "RINGBUF_PAGES": config.ringbuf_pages, "WAKE_EVERY": wake_every(config),
        "TTL_NS": f"{round(config.ttl_s * 1e9)}ULL",
        "HIST_SUB_BITS": histogram.SUB_BITS, "HIST_SUB": histogram.SUB, "HIST_BUCKETS": histogram.BUCKETS,
        "N_PROBE_COUNTERS": len(layout.PROBE_COUNTERS), "N_GROUP_COUNTERS": len(layout.GROUP_COUNTERS),
        "DIR_OUT": DIRECTIONS.index("out"), "DIR_IN": DIRECTIONS.index("in"),
        "TCP_SEND_HOOK": int(hooks.tcp_sendmsg_locked), "SOCK_RECV_HOOK": int(hooks.sock_recv_length),
        "UDP_CLAIM": int(hooks.udp), "READS_L2_OUT": layout.READS_L2_OUT, "READS_L2_IN": layout.READS_L2_IN,
        "VXLAN": int(bool(config.vxlan_ports)), "VXLAN_PORT(port)": vxlan_test(config.vxlan_ports),
    }
    defines |= offsets.defines()
    defines |= {f"C_{name.upper()}": i for i, name in enumerate(layout.PROBE_COUNTERS)}
    defines |= {f"G_{name.upper()}": i for i, name in enumerate(layout.GROUP_COUNTERS)}
    lines = [f"#define {name} {value}" for name, value in defines.items()]
    return "\n".join(lines) + "\n\n" + layout.c_definitions()


def program(offsets: KernelOffsets, config: EngineConfig, hooks: KernelHooks) -> str:
    """The complete C text for bcc."""
    source = resources.files("mace_agent.bpf").joinpath("mace.c").read_text()
    return prelude(offsets, config, hooks) + "\n" + source
