"""The bytecode warm-up ``make run`` starts beside ``dvc repro`` (:mod:`evolforge.core.warm_imports`)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from evolforge.core import warm_imports

REPO = Path(__file__).resolve().parents[1]


def test_make_run_starts_it_in_the_background_at_low_priority_before_the_fetches(tmp_path):
    venv = tmp_path / "venv"
    lines = subprocess.run(["make", "--no-print-directory", "-n", "run", f"VENV={venv}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    # llama-cpp-python's install (its compile) and the fetches as two jobs of one make
    assert lines[0].split()[-3:] == ["-j2", f"{venv}/.evolforge-llama-cpp", "fetch"]
    warm = next(k for k, line in enumerate(lines) if "evolforge.core.warm_imports" in line)
    assert lines[warm].startswith("nice -n 19 ") and lines[warm].rstrip().endswith("&")
    assert f"--stamp {venv}/.evolforge-warm" in lines[warm] and f"--ready {venv}/.evolforge-llama-cpp" in lines[warm]
    assert "evolforge.core.parallel_repro" in lines[warm + 1]  # the next command (the fetches), started at once
    # the lock's install (new packages to warm) removes the stamp, and is done before the warm-up and the fetches
    before = lines[:warm]
    assert before.index(f"rm -f {venv}/.evolforge-warm") < before.index(f"touch {venv}/.evolforge-base")
    # the whole install checked (pip check) after the fetches, before the pipeline
    after = lines[warm + 1:]
    check = next(k for k, line in enumerate(after) if line.endswith("-m pip check"))
    assert f"touch {venv}/.evolforge-installed" in after[check:]
    assert "--pipeline" in after[-1] and "--pipeline" not in "".join(after[:check])


def test_every_module_it_names_is_installed():
    """A module renamed by an upgrade would silently stop being warmed: each name must resolve here."""
    missing = [name for name in (*warm_imports.MODULES, *warm_imports.COMPILED) if importlib.util.find_spec(name) is None]
    assert missing == []


def test_a_module_that_fails_to_import_is_skipped_and_named():
    loaded, failed = warm_imports.warm(("json", "evolforge_no_such_module", "csv"))
    assert failed == ["evolforge_no_such_module"] and loaded > 0


def test_the_stamp_skips_a_second_warm_up(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(warm_imports, "warm", lambda modules=warm_imports.MODULES: calls.append(modules) or (7, []))
    stamp = tmp_path / ".evolforge-warm"
    warm_imports.main(["--stamp", str(stamp)])
    everything = [warm_imports.MODULES, warm_imports.COMPILED]  # no --ready: llama-cpp-python's modules too
    assert calls == everything and stamp.exists() and "7 modules" in capsys.readouterr().out
    warm_imports.main(["--stamp", str(stamp)])
    assert calls == everything  # the stamp was there: nothing imported


def test_llama_cpp_python_is_warmed_only_once_it_is_installed(tmp_path, monkeypatch, capsys):
    """While make run compiles it beside the fetches, a half-installed llama-cpp-python is never imported."""
    calls = []
    monkeypatch.setattr(warm_imports, "warm", lambda modules=warm_imports.MODULES: calls.append(modules) or (7, []))
    ready = tmp_path / ".evolforge-llama-cpp"
    warm_imports.main(["--ready", str(ready)])
    assert calls == [warm_imports.MODULES] and "not there yet" in capsys.readouterr().out
    ready.touch()
    warm_imports.main(["--ready", str(ready)])
    assert calls[1:] == [warm_imports.MODULES, warm_imports.COMPILED]
    assert not set(warm_imports.COMPILED) & set(warm_imports.MODULES)
