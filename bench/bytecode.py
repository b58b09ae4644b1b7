"""What compiling the lock's bytecode at install costs `make setup`, against Python compiling each module when it is
first imported (what the Makefile does: no ``--compile-bytecode``, ``PYTHONDONTWRITEBYTECODE`` empty).

    python bench/bytecode.py [--venv .venv] [--scratch /tmp/evolforge-bytecode]

Installs torch and the CPU lock (less llama-cpp-python: the part `make setup` wrote in the venv) by the venv's uv
into two fresh venvs under ``--scratch``, one with ``--compile-bytecode`` and one without, timing each (uv's cache
as the machine has it: `make setup` has filled it, so both read the same cache). Then, in the venv without
bytecode, imports what the pipeline's stages import (torch, transformers' model classes, TRL's trainer, lm-eval,
datasets, polars, DVC) in a fresh interpreter twice: the first compiles and writes what it imports, the second reads
it back. Prints the wall seconds of each and the module files compiled; the venvs are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = re.search(r"^TORCH := (\S+)$", (REPO / "Makefile").read_text(), re.M)[1]  # the pin `make setup` installs
IMPORTS = """
import time
started = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer
import lm_eval.evaluator
import datasets, polars
import dvc.repo
print(f"{time.perf_counter() - started:.1f}")
"""


def pip_sources(python: str) -> list[str]:
    """pip's configured wheel folders and indexes, as the Makefile hands them to uv."""
    out = []
    for key, flag in (("global.find-links", "--find-links"), ("global.extra-index-url", "--extra-index-url"),
                      ("global.index-url", "--index-url")):
        found = subprocess.run([python, "-m", "pip", "config", "get", key], capture_output=True, text=True).stdout
        out += [x for value in found.split() for x in (flag, value)]
    return out


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, done.stdout


def install(venv: Path, uv: Path, lock: Path, sources: list[str], compile_bytecode: bool) -> dict[str, float]:
    """A fresh venv with torch and the lock by uv: the seconds of each step."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    common = [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
              "--index-strategy", "unsafe-best-match", *sources, *(["--compile-bytecode"] if compile_bytecode else [])]
    torch_s, _ = timed([*common, TORCH])
    lock_s, _ = timed([*common, "--require-hashes", "--no-deps", "-r", str(lock)])
    return {"torch_s": round(torch_s, 1), "lock_s": round(lock_s, 1)}


def pyc_count(venv: Path) -> int:
    return sum(1 for _ in venv.rglob("*.pyc"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv", help="the project's venv (its uv and pip configuration)")
    parser.add_argument("--scratch", default="/tmp/evolforge-bytecode", help="where the two venvs are made")
    args = parser.parse_args(argv)
    venv, scratch = Path(args.venv).resolve(), Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    lock = venv / "lock-but-llama-cpp.txt"  # the lock less llama-cpp-python, as `make setup` cut it
    if not lock.is_file():
        sys.exit(f"{lock}: missing; run `make setup` first (it writes the lock's part that uv installs)")
    sources = pip_sources(str(venv / "bin" / "python"))
    try:
        compiled = install(scratch / "compiled", venv / "bin" / "uv", lock, sources, compile_bytecode=True)
        print(f"install with --compile-bytecode: torch {compiled['torch_s']} s, lock {compiled['lock_s']} s "
              f"({pyc_count(scratch / 'compiled')} modules compiled)")
        shutil.rmtree(scratch / "compiled")
        plain = install(scratch / "plain", venv / "bin" / "uv", lock, sources, compile_bytecode=False)
        print(f"install without:                 torch {plain['torch_s']} s, lock {plain['lock_s']} s")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "", "PYTHONPATH": str(REPO / "src")}
        before = pyc_count(scratch / "plain")
        python = str(scratch / "plain" / "bin" / "python")
        first, second = (float(timed([python, "-c", IMPORTS], env)[1].split()[-1]) for _ in range(2))
        written = pyc_count(scratch / "plain") - before
        print(f"the stages' imports, no bytecode yet: {first:.1f} s (compiling {written} modules); "
              f"again, reading it: {second:.1f} s")
        saved = compiled["torch_s"] + compiled["lock_s"] - plain["torch_s"] - plain["lock_s"]
        print(f"setup saves {saved:.1f} s; the first imports pay {first - second:.1f} s of it back, once")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
