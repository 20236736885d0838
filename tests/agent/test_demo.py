"""``mace demo``, the README's first command: it measures a pinging pod in namespaces it builds, prints
a summary, and removes everything it made, also when stopped with Ctrl-C."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ebpf

DEMO = [sys.executable, "-m", "mace.cli", "demo"]
SUMMARY_ROW = re.compile(r"^\s+(egress|ingress)\s+(\d+)\s+([\d.]+) us", re.MULTILINE)


def namespaces_of(pid: int) -> list[str]:
    """The network namespaces a demo run with this PID made that still exist."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"mace-demo-{pid}-")]


def summary_counts(output: str) -> dict[str, int]:
    return {direction: int(count) for direction, count, _ in SUMMARY_ROW.findall(output)}


def test_demo_measures_the_pod_and_removes_its_namespaces() -> None:
    demo = subprocess.Popen([*DEMO, "--duration", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    output, errors = demo.communicate(timeout=180)
    assert demo.returncode == 0, errors
    # ping sends every 0.2 s: about 15 requests in 3 s, each measured both ways
    counts = summary_counts(output)
    assert set(counts) == {"egress", "ingress"} and min(counts.values()) >= 5, output
    assert re.search(r"ping's own RTT: median [\d.]+ us over \d+ replies", output)
    assert f"Removed the namespaces mace-demo-{demo.pid}-*" in output
    assert namespaces_of(demo.pid) == []


def test_ctrl_c_stops_the_demo_with_a_summary_and_removes_its_namespaces() -> None:
    """Also where SIGINT reaches the demo already ignored (as in a shell's background job)."""
    demo = subprocess.Popen([*DEMO, "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert demo.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while not any(line.startswith("Attached.") for line in seen):
            assert time.monotonic() < deadline, "".join(seen)
            if select.select([demo.stdout], [], [], 1.0)[0]:
                line = demo.stdout.readline()
                assert line, f"the demo ended early: {''.join(seen)}"
                seen.append(line)
        assert namespaces_of(demo.pid) != []
        demo.send_signal(signal.SIGINT)
        rest, errors = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:  # SIGTERM lets it remove its namespaces; SIGKILL only if that fails
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    output = "".join(seen) + rest
    assert demo.returncode == 130, errors
    assert "Summary after" in output
    assert f"Removed the namespaces mace-demo-{demo.pid}-*" in output
    assert namespaces_of(demo.pid) == []
