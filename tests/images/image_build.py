"""Building the images for the image suite: tests/images/build.sh, which caches everything it can."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "images" / "build.sh"
BUILD_TIMEOUT_S = 1800.0
"""Generous: a cold build runs debootstrap and installs bcc, LLVM and the Python dependencies."""


class BuildError(RuntimeError):
    """build.sh failed; the message holds the end of its log."""


@dataclass(frozen=True)
class Built:
    """The images build.sh made, their OCI archives and how long the (possibly cached) build took."""

    agent: str
    operator: str
    archives: Path
    seconds: float


def build_images(archives: Path) -> Built:
    """Build (or reuse) both images and write their OCI archives into ``archives``."""
    began = time.monotonic()
    done = subprocess.run([str(BUILD), "--archive", str(archives), "agent", "operator"], capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise BuildError(f"tests/images/build.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    refs = dict(re.findall(r"^(\w+)_IMAGE=(\S+)$", done.stdout, re.MULTILINE))
    return Built(agent=refs["AGENT"], operator=refs["OPERATOR"], archives=archives,
                 seconds=time.monotonic() - began)
