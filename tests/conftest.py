"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest


def _namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session", autouse=True)
def no_leaked_namespaces() -> Iterator[None]:
    """Fail the session if a test left one of this run's network namespaces behind (and remove it)."""
    yield
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return
    ours = f"mace-t{os.getpid()}-"
    leaked = [name for name in _namespaces() if name.startswith(ours)]
    for name in leaked:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert not leaked, f"namespaces left behind: {leaked}"
