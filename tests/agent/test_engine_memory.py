"""The started engine gives back what compiling its program took: the compiler's pages and freed heap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mace_agent.memory import compiler_mappings

pytestmark = pytest.mark.ebpf

# In a fresh interpreter: start the node's engine, then read how much of the compiler stayed resident
# in it alone (pages another process maps too, such as another agent's, are the kernel's to keep).
STARTED = """
import json
from mace_agent.engine import NodeEngine
from mace_agent.memory import COMPILER_LIBRARIES
with NodeEngine() as engine:
    kib, path = {"Rss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}, ""
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            path = head[5] if len(head) >= 6 else ""
        elif head[0] in kib and COMPILER_LIBRARIES.search(path):
            kib[head[0]] += int(head[1])
    print(json.dumps({"compiler_rss_kib": kib["Rss:"],
                      "compiler_private_kib": kib["Private_Clean:"] + kib["Private_Dirty:"]}))
"""


def test_the_started_engine_keeps_no_compiler_pages_resident() -> None:
    done = subprocess.run([sys.executable, "-c", STARTED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    # Compiling touches about 90 MiB of LLVM's and clang's code; what stays is what bcc still runs.
    assert figures["compiler_private_kib"] < 16 * 1024, figures


def test_only_the_compilers_read_only_mappings_are_released() -> None:
    maps = "\n".join([
        "7f0000000000-7f0000100000 r--p 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "7f0000100000-7f0000200000 r-xp 00100000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "7f0000200000-7f0000210000 rw-p 00200000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "7f0000300000-7f0000400000 r-xp 00000000 08:01 12 /usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "7f0000500000-7f0000600000 r-xp 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0",
        "7f0000700000-7f0000800000 rw-p 00000000 00:00 0 ",
    ])
    assert compiler_mappings(maps) == [(0x7F0000000000, 0x7F0000100000), (0x7F0000100000, 0x7F0000200000),
                                       (0x7F0000300000, 0x7F0000400000)]
