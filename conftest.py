"""Suite guard: with MACE_REQUIRE_SUITES=ebpf,cluster (set by .ci/run) a suite that was skipped or
ran no test fails the session, so CI cannot pass on a machine where the real suites did not run."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

_required = [s for s in os.environ.get("MACE_REQUIRE_SUITES", "").split(",") if s]
_outcomes: dict[str, Counter[str]] = {suite: Counter() for suite in _required}

GROUPS = {"agent": "kernel", "e2e": "kernel", "images": "kernel", "unit": "kernel",
          "cluster": "harness", "reliability": "harness", "helm": "harness", "kubectl": "harness"}
"""Which pytest-xdist worker group runs each directory of tests/ (``scripts/dev test`` runs two workers):
the harness's users share one harness session, and the suites that build images or run the real
node share one worker; each group's tests run in order, the two groups side by side."""


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(ROOT).parts
        if len(parts) > 2 and parts[0] == "tests" and parts[1] in GROUPS:
            item.add_marker(pytest.mark.xdist_group(GROUPS[parts[1]]))
        # carried in the report to the process that checks the suites (xdist's controller)
        item.user_properties.append(("suites", ",".join(s for s in _required if item.get_closest_marker(s))))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        suites = dict(report.user_properties).get("suites", "")
        for suite in filter(None, str(suites).split(",")):
            # An expected failure ran (pytest reports it as skipped): it is no sign of a missing suite.
            _outcomes[suite]["xfailed" if hasattr(report, "wasxfail") else report.outcome] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller sees every worker's reports and checks
    problems = [f"suite '{suite}': {dict(counts) or 'no test ran'}"
                for suite, counts in _outcomes.items() if counts["skipped"] or not counts["passed"]]
    if problems and session.config.option.collectonly is False and not session.config.option.markexpr:
        print("\nrequired suites did not run fully: " + "; ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
