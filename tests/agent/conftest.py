"""Fixtures of the agent suites: the eBPF preconditions and lab topologies that clean up after themselves."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mace_agent.cgroups import cgroup2_roots

from mace_lab.topology import Topology


def ebpf_skip_reason() -> str | None:
    """Why the eBPF engine suites cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (eBPF programs and network namespaces)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing)"
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable (install python3-bpfcc; use a venv with system site packages)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = ebpf_skip_reason()
    if reason is None:
        return
    for item in items:
        if "ebpf" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def make_topology() -> Iterator[Callable[..., Topology]]:
    """Build topologies (``Topology`` keyword arguments); each is torn down after the test."""
    made: list[Topology] = []

    def make(**kwargs: Any) -> Topology:
        topology = Topology(**kwargs)
        made.append(topology)
        return topology

    yield make
    for topology in reversed(made):
        topology.close()


@pytest.fixture
def topology(make_topology: Callable[..., Topology]) -> Topology:
    """One node, one pod, one remote behind ``uplink0``."""
    return make_topology()


@pytest.fixture
def make_cgroup() -> Iterator[Callable[[str], Path]]:
    """Make cgroup v2 directories (as a container runtime does); at the end, end the processes
    this test left in them (by PID) and remove them."""
    roots = cgroup2_roots()
    if not roots:
        pytest.skip("no cgroup2 hierarchy is mounted")
    made: list[Path] = []

    def make(name: str) -> Path:
        path = Path(roots[0]) / f"mace-t{os.getpid()}-{len(made)}-{name}"
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in made:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # it may have exited since the read
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            select.select([], [], [], 0.05)  # the killed processes are reaped by their parents
        path.rmdir()
