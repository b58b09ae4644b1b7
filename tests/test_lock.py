"""The lock: `requirements/cpu.txt` and `requirements/gpu.txt` pin every package with hashes, `make setup`
installs exactly them, and what is installed here is what the lock says (docs/reference/dependencies.md)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from evolforge.io.records import OUTPUT_PACKAGES, installed_version

REPO = Path(__file__).resolve().parents[1]
CPU_LOCK, GPU_LOCK = REPO / "requirements" / "cpu.txt", REPO / "requirements" / "gpu.txt"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?")


def read_lock(path: Path) -> dict[str, dict]:
    """``{canonical name: {"version", "hashes", "applies"}}`` from a uv / pip-tools requirements file."""
    pins: dict[str, dict] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            marker = match["marker"]
            current = pins[canonicalize_name(match["name"])] = {
                "version": match["version"], "hashes": 0,
                "applies": Marker(marker.strip()).evaluate() if marker else True}
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current["hashes"] += 1
    return pins


def active_lock() -> Path:
    """The GPU lock where vLLM is installed (`make setup GPU=1`), else the CPU lock."""
    return GPU_LOCK if installed_version("vllm") else CPU_LOCK


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def torch_pin() -> str:
    """The torch version pyproject.toml pins (``torch==X``)."""
    [spec] = [d for d in pyproject()["project"]["dependencies"] if Requirement(d).name == "torch"]
    return str(Requirement(spec).specifier).removeprefix("==")


@pytest.mark.parametrize("lock", [CPU_LOCK, GPU_LOCK], ids=["cpu", "gpu"])
def test_every_pin_is_exact_and_hashed(lock):
    pins = read_lock(lock)
    assert len(pins) > 100, f"{lock}: only {len(pins)} pins"
    unhashed = sorted(name for name, pin in pins.items() if not pin["hashes"])
    assert not unhashed, f"{lock}: no --hash for {unhashed}; regenerate with `make lock`"
    body = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith(("#", " "))]
    assert all(PIN.match(ln) for ln in body), [ln for ln in body if not PIN.match(ln)]


def test_the_locks_satisfy_pyproject():
    """Every dependency of pyproject.toml (and its dev / gpu extras) is locked at a version its range allows;
    the CPU lock leaves torch out (installed first, CPU build), the GPU lock holds it at the same pin."""
    project = pyproject()["project"]
    cpu, gpu = read_lock(CPU_LOCK), read_lock(GPU_LOCK)
    wanted = [(cpu, d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]]
    wanted += [(gpu, d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]
               + project["optional-dependencies"]["gpu"]]
    for pins, spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if pins is cpu and name == "torch":
            assert name not in cpu, "the CPU lock must leave torch out: make setup installs the CPU build first"
            continue
        assert name in pins, f"{spec}: not in the lock; run `make lock`"
        assert req.specifier.contains(pins[name]["version"], prereleases=True), f"{spec}: locked {pins[name]['version']}"
    assert gpu["torch"]["version"] == torch_pin()


def test_installed_versions_match_the_lock():
    """What runs the suite is the locked set: every pin of the active lock is installed at its version."""
    lock = active_lock()
    differ = {name: (pin["version"], installed_version(name)) for name, pin in read_lock(lock).items()
              if pin["applies"] and (installed_version(name) is None
                                     or Version(installed_version(name)) != Version(pin["version"]))}
    assert not differ, (f"installed versions differ from {lock.relative_to(REPO)} (locked, installed): {differ}; "
                        "run `make setup`")
    assert Version(installed_version("torch")).base_version == torch_pin()


def test_make_setup_installs_uv_then_torch_first_then_exactly_the_lock(tmp_path):
    venv = tmp_path / "venv"  # not there: make prints every command of a fresh setup
    out = subprocess.run(["make", "-n", "setup", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    uv_at = out.index(f"pip install --quiet --require-hashes --no-deps -r {venv}/lock-uv.txt")  # uv, from the lock
    [torch_line] = [ln for ln in out.splitlines() if ln.endswith(f" torch=={torch_pin()}")]
    assert torch_line.startswith(f"{venv}/bin/uv pip install") and "--no-deps" not in torch_line  # with what it needs
    torch_at = out.index(torch_line)
    [rest_line] = [ln for ln in out.splitlines() if ln.endswith(f"-r {venv}/lock-but-llama-cpp.txt")]
    assert f"{venv}/bin/uv pip install" in rest_line and "--require-hashes --no-deps" in rest_line  # the rest, by uv
    rest_at = out.index(rest_line)
    llama_at = out.index(f"pip install --quiet --require-hashes --no-deps -r {venv}/lock-llama-cpp.txt")
    check_at = out.index("pip check")
    assert uv_at < torch_at < rest_at < out.index("pip install --quiet --no-deps --no-build-isolation -e .") < check_at
    # llama-cpp-python beside the lock, as a second job of one make; the whole set checked once both are in
    both = out.index(f"-j2 {venv}/.evolforge-base {venv}/.evolforge-llama-cpp")
    assert both < min(uv_at, llama_at) and llama_at < check_at
    indexed = subprocess.run(["make", "-n", "setup", f"VENV={venv}", "TORCH_INDEX=https://index.example/cpu"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    [torch_line] = [ln for ln in indexed.splitlines() if ln.endswith(f" torch=={torch_pin()}")]
    assert torch_line.count("--index-url") == 1 and "--index-url https://index.example/cpu" in torch_line
    [llama_line] = [ln for ln in out.splitlines() if "lock-llama-cpp.txt" in ln and "pip install" in ln]
    assert "-DLLAVA_BUILD=OFF" in llama_line and "-DGGML_NATIVE=ON" in llama_line
    assert f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={REPO}/requirements/llama-cpp-lib-only.cmake" in llama_line
    assert "set(LLAMA_BUILD_COMMON OFF)" in (REPO / "requirements" / "llama-cpp-lib-only.cmake").read_text()
    gpu = subprocess.run(["make", "-n", "setup", f"VENV={venv}", "GPU=1"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "requirements/gpu.txt" in gpu and "requirements/cpu.txt" not in gpu
    assert "torch==" not in gpu  # the GPU lock brings CUDA torch itself


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_make_setup_splits_the_lock_into_llama_cpp_python_and_the_rest(tmp_path, gpu):
    """The two files `make setup` installs from hold every pin of the lock once, hashes included:
    llama-cpp-python alone in one, everything else in the other."""
    venv = tmp_path / "venv"
    out = subprocess.run(["make", "-n", "setup", f"VENV={venv}"] + (["GPU=1"] if gpu else []), cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    venv.mkdir()
    for line in (ln for ln in out.splitlines() if ln.startswith("awk ")):
        subprocess.run(["bash", "-c", line], cwd=REPO, check=True)
    lock = read_lock(GPU_LOCK if gpu else CPU_LOCK)
    llama, rest = read_lock(venv / "lock-llama-cpp.txt"), read_lock(venv / "lock-but-llama-cpp.txt")
    assert llama == {"llama-cpp-python": lock["llama-cpp-python"]} and llama["llama-cpp-python"]["hashes"] >= 1
    assert rest == {name: pin for name, pin in lock.items() if name != "llama-cpp-python"}


def test_nothing_is_compiled_at_install_and_make_commands_keep_the_bytecode_they_write(tmp_path):
    """uv installs without compiling the lock's modules (bench/bytecode.py: most are never imported); every make
    command runs with PYTHONDONTWRITEBYTECODE empty, so a module compiled on its first import is read back by every
    later process, even where the environment sets the variable."""
    out = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "uv pip install" in out and "--compile-bytecode" not in out
    probe = tmp_path / "Makefile"
    probe.write_text(f"include {REPO / 'Makefile'}\nprobe:\n\t@python3 -c 'import sys; print(sys.dont_write_bytecode)'\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(["make", "-s", "-f", str(probe), "probe"], cwd=REPO, capture_output=True, text=True,
                          check=True, env=env)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_make_lock_regenerates_both_locks(tmp_path):
    out = subprocess.run(["make", "-n", "lock", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    compile_lines = [ln for ln in out.splitlines() if "uv pip compile pyproject.toml" in ln]
    assert len(compile_lines) == 2 and all("--generate-hashes" in ln for ln in compile_lines)
    assert "--no-emit-package torch" in compile_lines[0] and "-o requirements/cpu.txt" in compile_lines[0]
    assert "--extra gpu" in compile_lines[1] and "-o requirements/gpu.txt" in compile_lines[1]


def test_output_packages_are_locked():
    """The packages recorded in meta.json and the card (io/records.py) are pinned by the locks."""
    cpu, gpu = read_lock(CPU_LOCK), read_lock(GPU_LOCK)
    for name in OUTPUT_PACKAGES:
        assert name in gpu, name
        assert name in cpu or name in ("torch", "vllm"), name


def test_every_stage_output_records_the_versions(tmp_path):
    """write_output (every stage's folder) puts the installed versions of OUTPUT_PACKAGES in meta.json."""
    import json

    import polars as pl

    from evolforge.io.records import META, VERSIONS, write_output

    write_output(tmp_path / "out", pl.DataFrame({"id": ["a"]}), meta={"model": "m"})
    meta = json.loads((tmp_path / "out" / META).read_text())
    assert meta["model"] == "m" and sorted(meta[VERSIONS]) == sorted(OUTPUT_PACKAGES)
    assert meta[VERSIONS]["polars"] == pl.__version__ and meta[VERSIONS]["torch"] == installed_version("torch")
    assert meta[VERSIONS]["vllm"] == installed_version("vllm")  # None (JSON null) where it is not installed


def test_dvc_default_remote_is_configured_and_documented():
    """A fresh clone can `dvc pull` the committed run from the default remote the README names."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    name = config["core"]["remote"]
    url = config[f"'remote \"{name}\"'"]["url"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"`{url}`" in readme and "dvc pull" in readme and "dvc push" in readme


def test_no_dependency_folder_holds_files_dvc_does_not_track():
    """Python caches are ignored by DVC as by git, and the report depends on the finetune stage's tracked
    outputs, not on the folder where dvclive also writes a git-ignored params.yaml."""
    import yaml

    ignored = (REPO / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    report = stages["report"]["deps"]
    assert "metrics/train_live" not in report
    assert {"metrics/train_live/plots", "metrics/train_live/metrics.json"} <= set(report)
    finetune = {next(iter(o)) if isinstance(o, dict) else o for o in stages["finetune"]["outs"] + stages["finetune"]["metrics"]}
    assert {"metrics/train_live/plots", "metrics/train_live/metrics.json"} <= finetune
    assert "metrics/train_live/params.yaml" in (REPO / ".gitignore").read_text()
