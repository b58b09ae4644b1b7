"""``dvc.lock`` updated one stage at a time (:mod:`evolforge.core.dvc_cli`): the same file DVC writes, sooner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc.utils.serialize import modify_yaml as dvc_modify_yaml
from evolforge.core import dvc_cli

REPO = Path(__file__).resolve().parents[1]


def _update(modify, path: Path, change) -> str:
    with modify(path) as data:
        change(data)
    return path.read_text(encoding="utf-8")


def _both(tmp_path: Path, text: str, change) -> tuple[str, str]:
    """The lock ``text`` after ``change``, written by DVC's ``modify_yaml`` and by evolforge's."""
    theirs, ours = tmp_path / "dvc" / "dvc.lock", tmp_path / "ours" / "dvc.lock"
    for path in (theirs, ours):
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
    return _update(dvc_modify_yaml, theirs, change), _update(dvc_cli.modify_yaml, ours, change)


def _shipped_lock() -> str:
    return (REPO / "dvc.lock").read_text(encoding="utf-8")


def test_the_shipped_lock_after_a_stage_changes_and_one_is_added_is_the_file_dvc_writes(tmp_path):
    def change(data):
        stages = data["stages"]
        first, last = next(iter(stages)), list(stages)[-1]
        stages.update({first: {**stages[first], "cmd": stages[first]["cmd"] + " --again"}})
        stages.update({last: {**stages[last], "outs": [{"path": "x", "hash": "md5", "md5": "0" * 32, "size": 1}]}})
        stages.update({"added@one": {"cmd": "python x.py", "deps": [{"path": "x.py", "hash": "md5",
                                                                      "md5": "1" * 32, "size": 2}]}})
    import dvc.utils.serialize._yaml as dvc_yaml

    dumped, dump = [], dvc_yaml._dump
    theirs = _both(tmp_path, _shipped_lock(), change)[0]
    (tmp_path / "ours" / "dvc.lock").write_text(_shipped_lock(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dvc_yaml, "_dump", lambda data, stream: dumped.append(data) or dump(data, stream))
        ours = _update(dvc_cli.modify_yaml, tmp_path / "ours" / "dvc.lock", lambda data: None)
        # nothing changed: the lock dumped once, to find it is exactly DVC's dump (no comment to keep), no stage
        assert ours == _shipped_lock() and len(dumped) == 1 and len(dumped.pop()["stages"]) > 20
        ours = _update(dvc_cli.modify_yaml, tmp_path / "ours" / "dvc.lock", change)
    assert ours == theirs
    assert "--again" in ours and "added@one:" in ours
    # the lock this process wrote is not checked again; only the changed stages are dumped
    assert [list(data["stages"]) for data in dumped] == [[name] for name in ("seed", "fetch_embedder", "added@one")]


def test_an_unchanged_update_leaves_the_text_as_it_was(tmp_path):
    text = _shipped_lock()
    theirs, ours = _both(tmp_path, text, lambda data: data["stages"].update({}))
    assert ours == theirs == text


def test_keys_beside_the_stages_and_a_layout_dvc_does_not_write_are_dumped_whole(tmp_path):
    text = "stages:\n  a:\n    cmd: echo a\nschema: '2.0'\n"  # stages not last: not split, written whole
    theirs, ours = _both(tmp_path, text, lambda data: data["stages"].update({"b": {"cmd": "echo b"}}))
    assert ours == theirs
    text = "schema: '2.0'\nstages:\n  a:\n    cmd: echo a\n"
    theirs, ours = _both(tmp_path / "2", text, lambda data: data.update({"datasets": [{"name": "d"}]}))
    assert ours == theirs and "datasets:" in ours


def test_a_lock_with_a_comment_goes_to_dvc_and_keeps_it(tmp_path):
    text = "schema: '2.0'\nstages:\n  a:  # kept\n    cmd: echo a\n"
    theirs, ours = _both(tmp_path, text, lambda data: data["stages"].update({"b": {"cmd": "echo b"}}))
    assert ours == theirs and "# kept" in ours


def test_other_files_and_a_new_lock_go_to_dvc(tmp_path):
    other = tmp_path / "dvc.yaml"
    other.write_text("stages:\n  a:  # a comment\n    cmd: echo a\n", encoding="utf-8")
    assert "# a comment" in _update(dvc_cli.modify_yaml, other, lambda data: data["stages"]["a"].update(cmd="echo"))
    new = tmp_path / "new" / "dvc.lock"
    new.parent.mkdir()
    written = _update(dvc_cli.modify_yaml, new, lambda data: data.update({"schema": "2.0", "stages": {}}))
    assert yaml.safe_load(written) == {"schema": "2.0", "stages": {}}


def test_an_update_that_fails_leaves_the_lock_as_it_was_and_no_file_beside_it(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(_shipped_lock(), encoding="utf-8")
    with pytest.raises(RuntimeError), dvc_cli.modify_yaml(lock) as data:
        data["stages"].clear()
        raise RuntimeError("the stage's record failed")
    assert lock.read_text(encoding="utf-8") == _shipped_lock()
    assert os.listdir(tmp_path) == ["dvc.lock"]


def test_the_stage_blocks_are_the_stages_in_order():
    text = "schema: '2.0'\nstages:\n  a:\n    cmd: echo a\n  b@1:\n    cmd: >\n      echo\n"
    head, blocks = dvc_cli.stage_blocks(text, ["a", "b@1"])
    assert head == "schema: '2.0'\nstages:\n" and blocks == {"a": "  a:\n    cmd: echo a\n",
                                                              "b@1": "  b@1:\n    cmd: >\n      echo\n"}
    assert dvc_cli.stage_blocks(text, ["a"]) is None  # a name short: not the layout the data says


PIPELINE = {"stages": {
    "one": {"cmd": "python -c \"open('one.txt', 'w').write('1')\"", "outs": ["one.txt"]},
    "two": {"cmd": "python -c \"open('two.txt', 'w').write(open('one.txt').read() * 2)\"", "deps": ["one.txt"],
            "outs": ["two.txt"]}}}


def _repro(repo: Path, command: list[str]) -> str:
    """``command`` run in a new DVC repository of :data:`PIPELINE` at ``repo``; the lock it wrote."""
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for setup in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(setup, cwd=repo, check=True, env=env, capture_output=True, timeout=240)
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "two.txt").read_text() == "11"
    return (repo / "dvc.lock").read_text(encoding="utf-8")


def test_dvc_repro_through_it_writes_the_lock_dvc_repro_writes(tmp_path):
    by_dvc = _repro(tmp_path / "dvc", ["dvc", "repro"])
    ours = _repro(tmp_path / "ours", [sys.executable, "-m", "evolforge.core.dvc_cli", "repro"])
    assert ours == by_dvc and set(yaml.safe_load(ours)["stages"]) == {"one", "two"}


def test_install_routes_dvcs_lock_updates():
    import dvc.dvcfile

    before = dvc.dvcfile.modify_yaml
    try:
        dvc_cli.install()
        assert dvc.dvcfile.modify_yaml is dvc_cli.modify_yaml
    finally:
        dvc.dvcfile.modify_yaml = before
