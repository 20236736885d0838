"""Fixtures of the chart suite."""

from __future__ import annotations

import pytest
from chart_tools import Tools, find_tools


@pytest.fixture(scope="session")
def tools() -> Tools:
    """helm and kubectl."""
    return find_tools()
