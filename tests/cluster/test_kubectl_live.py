"""kubectl mace's live view in a real terminal (Debian's tmux): it draws, follows a resize, and exits on
``q`` and on Ctrl-C."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_client import Cluster, wait_for
from kubectl_helpers import PLUGIN, Measured, measured_probe

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def measured(cluster: Cluster) -> Iterator[Measured]:
    with measured_probe(cluster, "mace-live") as found:
        yield found


class Tmux:
    """A tmux server of our own (its own socket, no user config), ended at the end."""

    def __init__(self) -> None:
        binary = shutil.which("tmux")
        if binary is None:
            pytest.fail("tmux is missing: scripts/dev setup installs it")
        self.base = [binary, "-L", f"mace-test-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def screen(self, session: str) -> list[str]:
        return self("capture-pane", "-p", "-t", session).splitlines()

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30, check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    try:
        yield server
    finally:
        server.close()


def start(tmux: Tmux, cluster: Cluster, measured: Measured, rc_file: Path, session: str) -> None:
    # The terminal's size, not an inherited COLUMNS/LINES (rich prefers those), is what must be followed.
    command = (f"env -u COLUMNS -u LINES KUBECONFIG={shlex.quote(cluster.env['KUBECONFIG'])} "
               f"{shlex.quote(PLUGIN)} watch "
               f"{measured.probe} -n {measured.namespace}; echo $? > {shlex.quote(str(rc_file))}; sleep 600")
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    tmux("resize-window", "-t", session, "-x", "120", "-y", "40")  # a detached session may start at 80x24


def is_drawn(lines: list[str], width: int) -> bool:
    """Whether the screen shows the live view with its table rules ``width`` wide (it fills the terminal)."""
    rules = [line.strip() for line in lines if line.strip() and set(line.strip()) == {"─"}]
    has_rows = (any(line.split()[:1] == ["egress"] for line in lines)
                and any(line.split()[:1] == ["start"] for line in lines))
    return has_rows and bool(rules) and all(width - 2 <= len(r) <= width for r in rules)


def wait_drawn(tmux: Tmux, session: str, width: int) -> list[str]:
    """The screen once it shows the live view at ``width`` columns (fails with the screen after 30 s)."""
    deadline, lines = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        lines = tmux.screen(session)
        if is_drawn(lines, width):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"no live view at {width} columns after 30 s; the screen:\n" + "\n".join(lines))


def exit_code(rc_file: Path) -> list[int] | None:
    """[the plugin's exit status] once the shell wrote it, else None."""
    text = rc_file.read_text().strip() if rc_file.exists() else ""
    return [int(text)] if text else None


def test_live_view_draws_resizes_and_exits_on_q(tmux: Tmux, cluster: Cluster, measured: Measured,
                                                tmp_path: Path) -> None:
    rc_file = tmp_path / "rc"
    start(tmux, cluster, measured, rc_file, "view")
    screen = wait_drawn(tmux, "view", 120)
    assert any(f"{measured.namespace}/{measured.probe}" in line for line in screen)
    assert any("█" in line for line in screen), screen  # the histogram bars
    tmux("resize-window", "-t", "view", "-x", "80", "-y", "30")
    wait_drawn(tmux, "view", 80)
    tmux("send-keys", "-t", "view", "q")
    assert wait_for("kubectl mace to exit on q", lambda: exit_code(rc_file), 15, 0.2) == [0]
    # The alternate screen is left: what was drawn is gone, the shell's screen is back.
    assert not any(line.split()[:1] == ["egress"] for line in tmux.screen("view"))


def test_live_view_exits_on_ctrl_c(tmux: Tmux, cluster: Cluster, measured: Measured, tmp_path: Path) -> None:
    rc_file = tmp_path / "rc"
    start(tmux, cluster, measured, rc_file, "view")
    wait_drawn(tmux, "view", 120)
    tmux("send-keys", "-t", "view", "C-c")
    assert wait_for("kubectl mace to exit on Ctrl-C", lambda: exit_code(rc_file), 15, 0.2) == [130]
