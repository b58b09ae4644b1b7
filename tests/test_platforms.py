"""Where evolforge installs and what runs there: the universal lock covers every supported (CPython, platform)
pair (tools/check_lock.py), `make setup` refuses any other interpreter in one line, and the stages that run
model-written code refuse where the sandbox's isolation does not exist."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl
import pytest
from packaging.specifiers import SpecifierSet

from evolforge.config.bounds import Refusal
from evolforge.eval import sandbox
from evolforge.io.records import write_output

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "tools" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_lock"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check_lock = _tool()
FILES = json.loads(check_lock.FILES.read_text(encoding="utf-8"))


@pytest.mark.parametrize("platform", check_lock.PLATFORMS, ids=lambda p: p.name)
@pytest.mark.parametrize("python", check_lock.SUPPORTED_PYTHONS, ids=lambda v: "%d.%d" % v)
def test_every_supported_pair_installs_from_the_lock(python, platform):
    source, missing = check_lock.check_pair(check_lock.read_lock(), FILES, python, platform)
    assert not missing, f"CPython {python} on {platform.name}: no hashed file in requirements/cpu.txt for {missing}"
    assert "llama-cpp-python" in source  # compiled by make setup everywhere: PyPI has only its source


def test_a_pair_that_lacks_a_hash_fails_the_check():
    pins = check_lock.read_lock()
    [(wheel, digest)] = [(f, h) for f, h in FILES["numpy"]["files"].items()
                         if "cp312-cp312-manylinux" in f and f.endswith("x86_64.whl")]
    pins["numpy"]["hashes"].discard(digest)
    linux, mac = check_lock.PLATFORMS[0], check_lock.PLATFORMS[2]
    assert check_lock.check_pair(pins, FILES, (3, 12), linux)[1] == [f"numpy=={pins['numpy']['version']}"]
    assert check_lock.check_pair(pins, FILES, (3, 11), linux)[1] == []  # the other pairs keep their wheels
    assert check_lock.check_pair(pins, FILES, (3, 12), mac)[1] == []
    table, ok = check_lock.report(pins, FILES)
    assert not ok and "no wheel: numpy" in table, wheel


def test_lock_files_name_every_hash_of_the_lock():
    """requirements/lock-files.json is the lock's own listing: regenerate it (`tools/check_lock.py --refresh`,
    which `make lock` runs) whenever the lock changes."""
    pins = check_lock.read_lock()
    assert sorted(FILES) == sorted(pins)
    for name, pin in pins.items():
        assert FILES[name]["version"] == pin["version"], name
        assert set(FILES[name]["files"].values()) == pin["hashes"], f"{name}: lock-files.json is stale"


def test_the_python_range_is_one_everywhere():
    supported = [tuple(map(int, v.split("."))) for v in
                 re.search(r"^SUPPORTED_PYTHONS := (.+)$", (REPO / "Makefile").read_text(), re.M)[1].split()]
    assert tuple(supported) == check_lock.SUPPORTED_PYTHONS
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    allowed = SpecifierSet(project["project"]["requires-python"])
    assert [v for v in [(3, 10), *supported, (3, 14)] if "%d.%d.0" % v in allowed] == supported
    assert project["tool"]["ruff"]["target-version"] == "py%d%d" % supported[0]


def _setup_fails(tmp_path, *args) -> str:
    run = subprocess.run(["make", "setup", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}", *args], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert not (tmp_path / "venv" / ".evolforge-installed").exists()
    return run.stderr


def test_make_setup_refuses_an_unsupported_interpreter_in_one_line(tmp_path):
    err = _setup_fails(tmp_path, "SUPPORTED_PYTHONS=3.98 3.99")
    [line] = [ln for ln in err.splitlines() if not re.match(r"make(\[\d+\])?: ", ln)]  # make's own lines aside
    assert line.startswith("evolforge supports CPython 3.98, 3.99; ") and "make setup PYTHON=python3.99" in line
    assert not (tmp_path / "venv").exists()  # refused before the venv is made


def test_make_setup_refuses_a_venv_made_by_another_python(tmp_path):
    fake = tmp_path / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 3.99\n")
    fake.chmod(0o755)
    err = _setup_fails(tmp_path)
    assert "was made with Python 3.99, not" in err and "VENV=.venv-%d.%d" % sys.version_info[:2] in err


def test_code_runs_only_where_the_sandbox_isolates_it(monkeypatch):
    sandbox.require_sandbox("evaluate (humaneval)", platform="linux")
    with pytest.raises(Refusal, match=r"^evaluate \(humaneval\) runs model-written code, .* this machine is darwin"):
        sandbox.require_sandbox("evaluate (humaneval)", platform="darwin")
    monkeypatch.setattr(sandbox, "SANDBOX_PLATFORMS", ())  # as on macOS: nothing runs, not even the probe
    sandbox._layers.cache_clear()
    try:
        with pytest.raises(Refusal, match="the code sandbox runs model-written code"):
            sandbox.run_untrusted("x = 1")
    finally:
        sandbox._layers.cache_clear()


def _seed_table(folder: Path, checks: list[str | None]) -> Path:
    n = len(checks)
    write_output(folder, pl.DataFrame({
        "id": [f"s{i}" for i in range(n)], "root_id": [f"s{i}" for i in range(n)], "parent_id": [None] * n,
        "round": [0] * n, "method": ["seed"] * n, "status": ["seed"] * n, "failure_reason": [None] * n,
        "instruction": [f"question {i}" for i in range(n)], "input": [""] * n, "output": [""] * n,
        "answer_check": checks}, schema_overrides={"parent_id": pl.String, "failure_reason": pl.String}))
    return folder


def test_respond_refuses_off_linux_before_any_call_when_a_seed_runs_code(repo, tmp_path, monkeypatch):
    from evolforge.steps.respond.step import gather

    numbers = _seed_table(tmp_path / "numbers", ['{"kind": "number", "value": 4.0, "tolerance": 1e-06}', None])
    code = _seed_table(tmp_path / "seed", [None, '{"kind": "python_tests", "tests": "assert f(2) == 4"}'])
    assert not gather([], numbers).runs_code() and gather([], code).runs_code()

    spec = importlib.util.spec_from_file_location("respond_stage", repo / "stages" / "respond.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    def no_call(*args):
        raise AssertionError("the responder was opened before the refusal")

    monkeypatch.setattr("evolforge.steps.common.llms.open_role", no_call)
    monkeypatch.setattr(sandbox, "SANDBOX_PLATFORMS", ())
    write_output(tmp_path / "evolved" / "round_1", pl.DataFrame(schema={
        "id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": pl.Int64, "method": pl.String,
        "status": pl.String, "failure_reason": pl.String, "instruction": pl.String, "input": pl.String}))
    params = {"evolve": {"rounds": {"round_1": {"src": "data/seed", "index": 1}}},
              "respond": {"rounds": [1], "include_seed": True},
              "roles": {"responder": {"backend": "hf", "model": "fake"}}}  # parsed by the stage, never opened
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    monkeypatch.setattr("sys.argv", ["respond", "--params", str(tmp_path / "params.yaml"), "--evolved",
                                     str(tmp_path / "evolved"), "--seed", str(code), "--prompts", str(repo / "prompts"),
                                     "--out", str(tmp_path / "responses"), "--metrics", str(tmp_path / "respond.json")])
    with pytest.raises(Refusal, match=r"^respond \(the seeds' python_tests answer checks\) runs model-written code"):
        stage.main()
    assert not (tmp_path / "responses").exists()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AMX flags are x86-64 compiler flags")
def test_make_setup_compiles_llama_cpp_without_its_amx_kernels_on_x86_64(tmp_path):
    """-march=native on a Xeon with AMX would build llama.cpp's AMX kernels, which crash on Q4_K_M prompts; the
    -mno-amx flags (after gcc's expansion of -march=native) leave them out, for C and C++ alike."""
    out = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    [llama] = [ln for ln in out.splitlines() if "lock-llama-cpp.txt" in ln and "pip install" in ln]
    for flags in ("-DCMAKE_C_FLAGS=", "-DCMAKE_CXX_FLAGS="):
        assert f"{flags}-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in llama, llama
    assert "-DGGML_NATIVE=ON" in llama
    # never a wheel pip cached from a build with other flags or on another CPU: pip's cache is one per build key
    assert 'PIP_CACHE_DIR="' in llama and "evolforge/llama-cpp-python/$(" in llama
    assert "tools/llama_cpp_build_key.py" in llama


def test_a_llama_cpp_build_is_reused_only_with_the_same_flags_cpu_and_compiler(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import llama_cpp_build_key as key

    base = key.build_key("-DA=1")
    assert key.build_key("-DA=1") == base and len(base) == 16
    assert key.build_key("-DA=2") != base  # CMAKE_ARGS
    assert key.build_key(f"-DINCLUDE={key.REPO}/x.cmake") == key.build_key("-DINCLUDE=<checkout>/x.cmake")  # any clone
    monkeypatch.setattr(key, "cpu_features", lambda: "flags : avx2 amx_tile")
    assert key.build_key("-DA=1") != base  # another CPU
    with_cpu = key.build_key("-DA=1")
    monkeypatch.setattr(key, "compiler", lambda name: f"{name} 99.0")
    assert key.build_key("-DA=1") != with_cpu  # another compiler
