"""The key of a llama-cpp-python build: what the compiled library depends on beyond its pinned source.

`make setup` compiles llama-cpp-python for this CPU (-march=native) with LLAMA_CPP_CMAKE_ARGS and the user's
CMAKE_ARGS. pip's own wheel cache is keyed by the source alone, so it would hand back a wheel built with other
flags or on another CPU (a home directory shared between machines); the Makefile gives pip a cache directory per
key instead, and a build is reused only where everything below is the same.

    python tools/llama_cpp_build_key.py "$CMAKE_ARGS_AS_MAKE_PASSES_THEM"   # prints 16 hex digits

Standard library only: it runs right after the virtual environment is made.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_features() -> str:
    """The CPU's name and feature flags (/proc/cpuinfo; macOS: sysctl), which -march=native compiles for."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        keep = ("model name", "flags", "Features", "CPU implementer", "CPU part")
        lines = [ln for ln in cpuinfo.read_text(errors="replace").splitlines() if ln.split(":")[0].strip() in keep]
        return "\n".join(dict.fromkeys(lines))  # every core repeats them
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "hw.optional.arm64"],
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor()


def compiler(name: str) -> str:
    try:
        return subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return f"{name}: none"


def build_key(cmake_args: str) -> str:
    cmake_args = cmake_args.replace(str(REPO), "<checkout>")  # the include file's path: any clone, one key
    parts = [cmake_args, (REPO / "requirements" / "llama-cpp-lib-only.cmake").read_text(), platform.system(),
             platform.machine(), cpu_features(), compiler(os.environ.get("CC", "cc")),
             compiler(os.environ.get("CXX", "c++"))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(build_key(" ".join(sys.argv[1:])))
