"""Helpers of the chart suite: the helm and kubectl binaries the harness builds (cached outside the repo),
rendering the chart, picking objects out of a rendering."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mace"
BUILD_TOOLS = REPO / "tests" / "harness" / "build-tools.sh"
BUILD_TIMEOUT_S = 3600.0
"""Generous: the first run on a machine builds helm and kubectl from Go modules."""


@dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str

    def helm_run(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                 timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run helm; with ``check``, fail the test with its stderr on a non-zero exit."""
        done = subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def render(self, *args: str, release: str = "mace", namespace: str = "mace-system"
               ) -> list[dict[str, Any]]:
        """The objects ``helm template RELEASE CHART ARGS`` renders."""
        out = self.helm_run("template", release, str(CHART), "--namespace", namespace, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find_tools() -> Tools:
    """$HELM and $KUBECTL (set by scripts/dev), else what tests/harness/build-tools.sh builds or finds cached.

    Skips when neither works (e.g. no Go toolchain to build them), saying why.
    """
    helm, kubectl = os.environ.get("HELM"), os.environ.get("KUBECTL")
    if helm and kubectl:
        return Tools(helm=helm, kubectl=kubectl)
    done = subprocess.run([str(BUILD_TOOLS)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          check=False)
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or "HELM" not in found or "KUBECTL" not in found:
        pytest.skip("no helm/kubectl (set HELM and KUBECTL, or let tests/harness/build-tools.sh build "
                    f"them): {done.stderr.strip()[-500:]}")
    return Tools(helm=helm or found["HELM"], kubectl=kubectl or found["KUBECTL"])


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` (whose name ends with ``name_suffix``)."""
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    names = [o["metadata"]["name"] for o in found]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {names}"
    return found[0]
