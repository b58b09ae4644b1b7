"""The bytecode warm-up ``make run`` starts beside ``dvc repro`` (:mod:`evolforge.core.warm_imports`)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from evolforge.core import warm_imports

REPO = Path(__file__).resolve().parents[1]


def test_make_run_starts_it_in_the_background_at_low_priority_before_dvc_repro(tmp_path):
    lines = subprocess.run(["make", "--no-print-directory", "-n", "run", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    warm = next(k for k, line in enumerate(lines) if "evolforge.core.warm_imports" in line)
    assert lines[warm].startswith("nice -n 19 ") and lines[warm].rstrip().endswith("&")
    assert f"--stamp {tmp_path / 'venv'}/.evolforge-warm" in lines[warm]
    assert "evolforge.core.parallel_repro" in lines[warm + 1]  # the next command (the fetches), started at once
    # an install (a new lock: new packages to warm) removes the stamp before its own
    setup = lines[:warm]
    assert f"rm -f {tmp_path / 'venv'}/.evolforge-warm" in setup
    assert setup.index(f"rm -f {tmp_path / 'venv'}/.evolforge-warm") < setup.index(f"touch {tmp_path / 'venv'}/.evolforge-installed")


def test_every_module_it_names_is_installed():
    """A module renamed by an upgrade would silently stop being warmed: each name must resolve here."""
    missing = [name for name in warm_imports.MODULES if importlib.util.find_spec(name) is None]
    assert missing == []


def test_a_module_that_fails_to_import_is_skipped_and_named():
    loaded, failed = warm_imports.warm(("json", "evolforge_no_such_module", "csv"))
    assert failed == ["evolforge_no_such_module"] and loaded > 0


def test_the_stamp_skips_a_second_warm_up(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(warm_imports, "warm", lambda: calls.append(1) or (7, []))
    stamp = tmp_path / ".evolforge-warm"
    warm_imports.main(["--stamp", str(stamp)])
    assert calls == [1] and stamp.exists() and "7 modules" in capsys.readouterr().out
    warm_imports.main(["--stamp", str(stamp)])
    assert calls == [1]  # the stamp was there: nothing imported
