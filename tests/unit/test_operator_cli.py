"""``mace-operator``: bad input ends with a message and exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import kopf
from mace_operator.handlers import FINALIZER, register, settings
from mace_operator.reconcile import Reconciler


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mace_operator.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def test_missing_kubeconfig(tmp_path: Path) -> None:
    done = run("--kubeconfig", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr.startswith("mace-operator: cannot load a cluster configuration")
    assert "Traceback" not in done.stderr


def test_missing_token_file(tmp_path: Path) -> None:
    done = run("--agent-token-file", str(tmp_path / "token"))
    assert done.returncode == 2
    assert "--agent-token-file" in done.stderr and "Traceback" not in done.stderr


def test_garbage_kubeconfig(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("{not: [yaml")
    done = run("--kubeconfig", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(bad) in done.stderr


def test_scope_flags_exclude_each_other() -> None:
    done = run("-n", "a", "--all-namespaces")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr


def test_state_lives_in_annotations_and_handlers_have_ids() -> None:
    configured = settings(kopf.OperatorSettings())
    assert configured.persistence.finalizer == FINALIZER == "mace.dev/stop-measurement"
    assert isinstance(configured.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    registry = kopf.OperatorRegistry()
    register(registry, Reconciler(api=None, agents=None))  # type: ignore[arg-type]
    ids = {h.id for h in registry._changing.get_all_handlers()}
    assert {"probe-create", "probe-update/spec", "probe-resume", "stop-measurement"} <= ids


def test_bookkeeping_holds_the_spec_only() -> None:
    """A probe carrying 200 kB of annotations and labels gets a diff base of its spec alone."""
    spec = {"pod": "pinger", "in": {"corr": ["icmp_seq"]}, "out": {"corr": ["icmp_seq"]}}
    body = kopf.Body({"apiVersion": "mace.dev/v1alpha1", "kind": "LatencyProbe",
                      "metadata": {"name": "big", "annotations": {"example.com/blob": "x" * 200_000},
                                   "labels": {"team": "net"}},
                      "spec": spec, "status": {"phase": "Measuring"}})
    storage = settings(kopf.OperatorSettings()).persistence.diffbase_storage
    assert storage.build(body=body) == {"spec": spec}


def test_metrics_address_must_be_host_and_port() -> None:
    done = run("--metrics", "0.0.0.0")
    assert done.returncode == 2 and "--metrics 0.0.0.0: expected HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_port_taken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = run("--metrics", address)
    assert done.returncode == 2 and f"--metrics {address}:" in done.stderr and "in use" in done.stderr
    assert "Traceback" not in done.stderr
