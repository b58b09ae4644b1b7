"""tools/gpu_carry.py, the folders a GPU machine receives beside the checkout: the wheels' pins come from the GPU
lock, the tokenizer travels gzipped and loads as it is, and git keeps ignoring both folders."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # as python puts the script's folder first when it runs the tool
spec = importlib.util.spec_from_file_location("gpu_carry", REPO / "tools" / "gpu_carry.py")
gpu_carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_carry)


def test_every_wheel_is_pinned_by_the_gpu_lock():
    pins = gpu_carry.locked_versions(REPO / "requirements/gpu.txt", gpu_carry.FROM_LOCK)
    assert set(pins) == set(gpu_carry.FROM_LOCK) and all(v[0].isdigit() for v in pins.values())
    with pytest.raises(SystemExit, match="no pin for no-such-package"):
        gpu_carry.locked_versions(REPO / "requirements/gpu.txt", ("trl", "no-such-package"))


def test_the_tokenizer_folder_loads_as_the_probe_reads_it(tmp_path):
    source = tmp_path / "gguf"
    source.mkdir()
    (source / "tokenizer.json").write_text('{"model": {}}', encoding="utf-8")
    (source / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (source / "model.gguf").write_bytes(b"weights stay behind")
    gpu_carry.tokenizer_folder(source, tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json.gz", "tokenizer_config.json"]
    assert gzip.decompress((tmp_path / "tok" / "tokenizer.json.gz").read_bytes()) == b'{"model": {}}'
    with pytest.raises(SystemExit, match="no tokenizer.json"):
        gpu_carry.tokenizer_folder(tmp_path / "empty", tmp_path / "tok2")


def test_both_folders_are_excluded_once(tmp_path):
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("# git's own comment\n", encoding="utf-8")
    for _ in range(2):
        gpu_carry.exclude(tmp_path, ["tok-qwen", ".whl"])
    lines = (tmp_path / ".git" / "info" / "exclude").read_text(encoding="utf-8").splitlines()
    assert lines == ["# git's own comment", "/tok-qwen/", "/.whl/"]
