"""Table-driven: every bad input is one line on stderr, exit 2, and nothing left behind.

The cases live in ``tests/bad_inputs/cases_*.py`` (see ``tests/bad_inputs/framework.py``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import stat
import sys
from pathlib import Path

import pytest

import bad_inputs
from bad_inputs.framework import BadInput
from immunelm.cli.main import main


def _all_cases() -> list[BadInput]:
    cases = []
    for info in pkgutil.iter_modules(bad_inputs.__path__):
        if info.name.startswith("cases_"):
            cases.extend(importlib.import_module(f"bad_inputs.{info.name}").CASES)
    return cases


CASES = _all_cases()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mode (directories count too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (0 if stat.S_ISDIR(st.st_mode) else st.st_size, st.st_mode)
    return out


def test_cases_have_unique_ids_and_enough_of_them():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CASES) >= 60, len(CASES)


class WorkStarted(Exception):
    """Raised by the patched engine: the bad input was not caught before training began."""


def _refuse_work(*args, **kwargs):
    raise WorkStarted("training started: the bad input was not refused before any work")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: BadInput, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("immunelm.engine.engine.Engine.__init__", _refuse_work)
    case.write_files(tmp_path)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(sys, "argv", ["immunelm", *case.argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), lines[0]
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before, "the failed run left files behind (or changed them)"
