"""The kind suite (marked ``kind``): tests/e2e_kind/run.sh, where a Docker engine and kind exist."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kind: end to end on a kind cluster (needs a Docker engine and kind)")
