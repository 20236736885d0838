"""What one helper call or map access costs inside a program on this machine.

Each variant is a raw tracepoint program on ``netif_receive_skb`` whose body does one thing (nothing,
an array lookup, a kernel read, a task-local storage lookup, ...). A flood ping on the loopback device of
a network namespace of its own drives it, and the program's own run time per run comes from
``kernel.bpf_stats_enabled`` (restored after). Three loads of each variant; the figures are ns per run,
the empty program's included: the difference is what the body costs. The engine's hooks are built from
these pieces, so this says which of them to avoid on the paths every packet and call takes.

Run: sudo .venv/bin/python bench/helper_cost.py [--pings N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchlib import BpfStats, machine, program_stats, require_root
from mace_agent import kernel

MAPS = """
BPF_ARRAY(array, u64, 1);
BPF_PERCPU_ARRAY(per_cpu, u64, 1);
BPF_HASH(hash, u64, u64, 8192);
BPF_TASK_STORAGE(storage, u64);
"""
VARIANTS = {
    "empty": "return 0;",
    "array lookup": "u32 z = 0; u64 *v = array.lookup(&z); return v && *v == 12345;",
    "per-CPU array lookup": "u32 z = 0; u64 *v = per_cpu.lookup(&z); return v && *v == 12345;",
    "hash lookup (miss)": "u64 k = ctx->args[0]; return hash.lookup(&k) != 0;",
    "bpf_probe_read_kernel, 8 bytes": "u64 d = 0; bpf_probe_read_kernel(&d, 8, (void *)(ctx->args[0] + 16)); "
                                      "return d == 1;",
    "task storage lookup (none)": "return storage.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0) "
                                  "!= 0;",
    "bpf_get_current_cgroup_id": "return bpf_get_current_cgroup_id() == 1;",
    "bpf_ktime_get_ns": "return bpf_ktime_get_ns() == 1;",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=20_000, help="flood pings per load of a variant")
    args = parser.parse_args()
    require_root()
    kernel.prepare()
    from bcc import BPF

    ns = f"mace-helper-cost-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        print(f"machine: {machine()}")
        with BpfStats():
            for name, body in VARIANTS.items():
                figures = []
                for _ in range(3):
                    bpf = BPF(text=(MAPS + f"RAW_TRACEPOINT_PROBE(netif_receive_skb) {{ {body} }}").encode())
                    try:
                        subprocess.run(["ip", "netns", "exec", ns, "ping", "-q", "-f", "-c", str(args.pings),
                                        "127.0.0.1"], stdout=subprocess.DEVNULL, check=True)
                        stats = program_stats(bpf)["raw_tracepoint__netif_receive_skb"]
                        figures.append(stats["run_time_ns"] / max(1, stats["run_cnt"]))
                    finally:
                        bpf.cleanup()
                print(f"{name:32s} " + "  ".join(f"{f:6.1f}" for f in figures) + " ns per run", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
