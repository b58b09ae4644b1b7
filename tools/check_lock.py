"""Does the CPU lock install on every supported (CPython, platform) pair?

``requirements/cpu.txt`` is one universal resolution: each pin holds the hash of every file the package index
has for that version, and a marker where a pin applies only somewhere. A pair is covered when every pin that
applies there has a wheel that the pair's pip accepts and whose hash the lock holds; a pin with no such wheel
anywhere but a hashed source archive is *built from source* there (llama-cpp-python, compiled by `make setup`).

    python tools/check_lock.py              # offline, from requirements/lock-files.json (what the test runs)
    python tools/check_lock.py --refresh    # rewrite lock-files.json from the index (after `make lock`)
    python tools/check_lock.py --pip        # ask pip itself: install --dry-run --platform --python-version
                                            #   --only-binary=:all: --require-hashes, one run per pair

``lock-files.json`` names each hashed file of the lock (``{name: {version, files: {filename: sha256}}}``), so
the offline check knows which wheel a hash belongs to; the tags a pair accepts are packaging's, for the
oldest platform evolforge supports (glibc 2.28, macOS 14). Exit 1 when a supported pair lacks a file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "cpu.txt"
FILES = REPO / "requirements" / "lock-files.json"
INDEX = "https://pypi.org/simple"
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
CHECKED_PYTHONS = SUPPORTED_PYTHONS + ((3, 14),)  # 3.14 is reported, not promised
# Pins the index has no usable wheel of (only a source archive, or a Python 2 wheel): pip builds them at
# install. Only llama-cpp-python compiles (a C++ compiler); the others are pure Python. A new one fails the check.
SOURCE_BUILT = {"llama-cpp-python": "compiles llama.cpp", "antlr4-python3-runtime": "pure Python",
                "langdetect": "pure Python", "rouge-score": "pure Python", "sqlitedict": "pure Python",
                "word2number": "pure Python"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)"
                 r"\s*(?:;(?P<marker>[^\\]+))?")


@dataclass(frozen=True)
class Platform:
    name: str  # as README's table says it
    pip_platform: str  # the newest platform tag accepted: glibc 2.28 / macOS 14 (older tags are accepted too)
    sys_platform: str
    platform_system: str
    machine: str

    def wheel_platforms(self) -> list[str]:
        if self.sys_platform == "darwin":
            major = int(self.pip_platform.split("_")[1])
            return list(tags.mac_platforms((major, 0), self.machine))
        glibc_minor = int(self.pip_platform.split("_")[2])
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        names = []
        for minor in range(glibc_minor, 4, -1):
            names.append(f"manylinux_2_{minor}_{self.machine}")
            if minor in legacy and (self.machine == "x86_64" or minor == 17):
                names.append(f"{legacy[minor]}_{self.machine}")
        return names


PLATFORMS = (
    Platform("Linux x86-64", "manylinux_2_28_x86_64", "linux", "Linux", "x86_64"),
    Platform("Linux aarch64", "manylinux_2_28_aarch64", "linux", "Linux", "aarch64"),
    Platform("macOS arm64", "macosx_14_0_arm64", "darwin", "Darwin", "arm64"),
)


def read_lock(path: Path = LOCK) -> dict[str, dict]:
    """``{canonical name: {"version", "marker", "hashes"}}`` from a uv requirements file."""
    pins: dict[str, dict] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = pins[canonicalize_name(match["name"])] = {
                "version": match["version"], "marker": (match["marker"] or "").strip() or None, "hashes": set()}
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current["hashes"].add(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return pins


def environment(python: tuple[int, int], platform: Platform) -> dict[str, str]:
    """The marker environment of CPython ``python`` on ``platform``."""
    version = "%d.%d" % python
    return {"python_version": version, "python_full_version": version + ".0", "sys_platform": platform.sys_platform,
            "platform_system": platform.platform_system, "platform_machine": platform.machine, "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": version + ".0", "platform_release": "", "platform_version": "",
            "extra": ""}


def accepted_tags(python: tuple[int, int], platform: Platform) -> set[tags.Tag]:
    plats = platform.wheel_platforms()
    abi = "cp%d%d" % python
    return set(tags.cpython_tags(python, [abi, "abi3", "none"], plats)) | set(
        tags.compatible_tags(python, abi, plats))


def check_pair(pins: dict[str, dict], files: dict[str, dict], python: tuple[int, int],
               platform: Platform) -> tuple[list[str], list[str]]:
    """(built from source, missing): the pins applying on the pair that pip builds from a hashed source archive
    (SOURCE_BUILT), and those that cannot install there from the lock (no hashed wheel the pair accepts, and no
    hashed source archive, or one that SOURCE_BUILT does not declare)."""
    accepted, env = accepted_tags(python, platform), environment(python, platform)
    source, missing = [], []
    for name, pin in sorted(pins.items()):
        if pin["marker"] and not Marker(pin["marker"]).evaluate(env):
            continue
        known = files.get(name, {})
        hashed = {filename for filename, digest in known.get("files", {}).items() if digest in pin["hashes"]}
        wheels = [f for f in hashed if f.endswith(".whl") and parse_wheel_filename(f)[3] & accepted]
        if wheels:
            continue
        if name in SOURCE_BUILT and any(not f.endswith(".whl") for f in hashed):
            source.append(name)
        else:
            missing.append(f"{name}=={pin['version']}")
    return source, missing


def report(pins: dict[str, dict], files: dict[str, dict]) -> tuple[str, bool]:
    """A Markdown table, one row per platform and a column per Python, and whether every supported pair passes."""
    head = "| platform | " + " | ".join("CPython %d.%d" % p for p in CHECKED_PYTHONS) + " |"
    lines, ok = [head, "|---" * (len(CHECKED_PYTHONS) + 1) + "|"], True
    for platform in PLATFORMS:
        cells = []
        for python in CHECKED_PYTHONS:
            source, missing = check_pair(pins, files, python, platform)
            if missing:
                ok &= python not in SUPPORTED_PYTHONS
                cells.append("no wheel: " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
            else:
                compiled = [name for name in source if SOURCE_BUILT[name] != "pure Python"]
                cells.append("ok" + (" (compiles " + ", ".join(compiled) + ")" if compiled else ""))
        lines.append(f"| {platform.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), ok


def refresh(pins: dict[str, dict], index: str = INDEX) -> dict[str, dict]:
    """Each locked file's name, from the index's JSON simple API (PEP 691), kept only where the lock hashes it."""
    out = {}
    for name, pin in sorted(pins.items()):
        request = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
        kept = {}
        for entry in listing["files"]:
            digest = entry.get("hashes", {}).get("sha256")
            if digest in pin["hashes"] and _version_of(entry["filename"]) == pin["version"]:
                kept[entry["filename"]] = digest
        out[name] = {"version": pin["version"], "files": dict(sorted(kept.items()))}
    return out


def _version_of(filename: str) -> str | None:
    try:
        parsed = parse_wheel_filename(filename) if filename.endswith(".whl") else parse_sdist_filename(filename)
    except ValueError:
        return None
    return str(parsed[1])


def pip_check(pins: dict[str, dict]) -> tuple[str, bool]:
    """pip's own answer per pair: a dry-run install of the lock's wheels for that interpreter and platform."""
    lines, ok = [], True
    body = _lock_without(frozenset(SOURCE_BUILT))
    for platform in PLATFORMS:
        for python in CHECKED_PYTHONS:
            with tempfile.TemporaryDirectory() as target:
                run = subprocess.run(
                    [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
                     "--require-hashes", "--only-binary=:all:",
                     *[arg for tag in platform.wheel_platforms() for arg in ("--platform", tag)],
                     "--python-version", "%d.%d" % python, "--implementation", "cp", "--target", target,
                     "--isolated", "-r", body], capture_output=True, text=True)
            verdict = "ok" if run.returncode == 0 else "FAILED: " + _last_error(run.stderr)
            if run.returncode and python in SUPPORTED_PYTHONS:
                ok = False
            lines.append(f"CPython {'%d.%d' % python} on {platform.name}: {verdict}")
    lines.append("left out, built from source at install (no wheel on the index): "
                 + ", ".join(f"{name} ({why})" for name, why in sorted(SOURCE_BUILT.items())))
    return "\n".join(lines), ok


def _lock_without(names: frozenset[str]) -> str:
    """The lock less ``names``, as a temporary file for pip."""
    keep, kept = True, []
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            keep = canonicalize_name(match["name"]) not in names
        if keep:
            kept.append(line)
    handle = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    handle.write("\n".join(kept) + "\n")
    handle.close()
    return handle.name


def _last_error(stderr: str) -> str:
    errors = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("ERROR")]
    return (errors[-1] if errors else stderr.strip()[-300:])[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--refresh", action="store_true", help="rewrite requirements/lock-files.json from the index")
    mode.add_argument("--pip", action="store_true", help="ask pip (install --dry-run) for every pair; needs the index")
    parser.add_argument("--index", default=INDEX, help="a PEP 691 simple index (for --refresh)")
    args = parser.parse_args(argv)
    pins = read_lock()
    if args.pip:
        text, ok = pip_check(pins)
        print(text)
        return 0 if ok else 1
    if args.refresh:
        listing = refresh(pins, args.index)
        FILES.write_text("{\n" + ",\n".join(f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True)}"
                                             for name, entry in listing.items()) + "\n}\n", encoding="utf-8")
    text, ok = report(pins, json.loads(FILES.read_text(encoding="utf-8")))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
