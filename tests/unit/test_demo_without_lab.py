"""``mace demo`` where the lab is not installed (as in the images): a clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from mace.cli import EXIT_UNAVAILABLE, main


class _NoLab(MetaPathFinder):
    """Finds no ``mace_lab``, as an interpreter without it would."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "mace_lab":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def test_demo_without_the_lab_says_so(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in [name for name in sys.modules if name == "mace_lab" or name.startswith("mace_lab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoLab(), *sys.meta_path])
    assert main(["demo", "--duration", "1"]) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("mace demo: needs the test lab (the mace_lab package)")
    assert "Traceback" not in err
