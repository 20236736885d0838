"""Suite guard: with MACE_REQUIRE_SUITES=ebpf,cluster (set by .ci/run) a suite that was skipped or
ran no test fails the session, so CI cannot pass on a machine where the real suites did not run."""

from __future__ import annotations

import os
from collections import Counter

import pytest

_required = [s for s in os.environ.get("MACE_REQUIRE_SUITES", "").split(",") if s]
_outcomes: dict[str, Counter[str]] = {suite: Counter() for suite in _required}
_suite_of: dict[str, list[str]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _suite_of[item.nodeid] = [s for s in _required if item.get_closest_marker(s)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        for suite in _suite_of.get(report.nodeid, []):
            # An expected failure ran (pytest reports it as skipped): it is no sign of a missing suite.
            _outcomes[suite]["xfailed" if hasattr(report, "wasxfail") else report.outcome] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    problems = [f"suite '{suite}': {dict(counts) or 'no test ran'}"
                for suite, counts in _outcomes.items() if counts["skipped"] or not counts["passed"]]
    if problems and session.config.option.collectonly is False and not session.config.option.markexpr:
        print("\nrequired suites did not run fully: " + "; ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
