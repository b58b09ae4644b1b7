"""For every source file, the stages a one-line edit of it makes stale.

A stage is stale when one of its ``dvc.yaml`` deps changed, so the stages one edit makes stale are the stages
(the ``foreach`` ones expanded: ``evolve@round_1`` ...) that list the file among their deps. This tool reads
them from DVC's own view of ``dvc.yaml`` and prints the mean over the source files, the files that stale every
stage, the shared base (what the stage runner, the params loader and the errors import) and the worst of the
other files, each with the stages it stales::

    python tools/staleness.py                 # the figures
    python tools/staleness.py --all           # every file with its stages
    python tools/staleness.py --verify 6      # and check 6 files (with the worst, a base file and one no stage
                                              # runs) against real `dvc status` on a temporary copy of the repo
    python tools/staleness.py --write         # write the figures docs/explanation/architecture.md quotes
                                              # (FIGURES_FILE, and the numbers behind its markers in the
                                              # pages; `make regen` runs this)
    python tools/staleness.py --check         # exit 1 when FIGURES_FILE is stale (tests/test_regen.py)

``--verify`` copies the repository's files (tracked and untracked, not ignored) to a temporary folder, writes
its ``dvc.lock`` so that every source dep holds the file's current hash, appends one comment line to each
sample file in turn and runs ``dvc status --json``: the stages whose status changed are the ones the edit
made stale. The tool exits 1 when they differ from the prediction. ``tests/test_staleness.py`` runs it on a
few files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "src/evolforge"
# the stage runner, records, errors and the params loader: what every stage runs (with what they import)
BASE_ROOTS = ("src/evolforge/core/stage.py", "src/evolforge/config/loader.py")
# the figures the docs quote (each behind a `<!--= docs/reference/staleness.json key -->` marker, tests/test_docs.py)
FIGURES_FILE = "docs/reference/staleness.json"


def expanded_deps(root: Path = REPO) -> dict[str, set[str]]:
    """``{stage address: its deps}`` as DVC reads ``dvc.yaml`` (``foreach`` expanded from params.yaml)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name: {dep.def_path for dep in stage.deps} for stage in repo.index.stages}


def source_files(root: Path = REPO) -> list[str]:
    """Every file of the package (modules and the data files beside them), repository-relative."""
    return sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def stales(path: str, deps: dict[str, set[str]]) -> list[str]:
    """The stages that depend on ``path`` (itself or a folder above it)."""
    return sorted(name for name, found in deps.items()
                  if path in found or any(path.startswith(d.rstrip("/") + "/") for d in found))


def shared_base(root: Path = REPO) -> set[str]:
    """The files the stage runner, the errors and the params loader import (tools/stage_deps.py's closure)."""
    sys.path.insert(0, str(root / "tools"))
    import stage_deps

    found = set(BASE_ROOTS)
    for start in BASE_ROOTS:
        found |= set(stage_deps.closure(root / start))
    return found


def figures(root: Path = REPO) -> dict:
    deps = expanded_deps(root)
    table = {path: stales(path, deps) for path in source_files(root)}
    used = {p: s for p, s in table.items() if s}
    modules = {p: s for p, s in table.items() if p.endswith(".py")}
    base = shared_base(root)
    return {"stages": len(deps), "table": table, "base": base,
            "mean_used": sum(len(s) for s in used.values()) / len(used),
            "mean_all": sum(len(s) for s in table.values()) / len(table),
            "mean_modules": sum(len(s) for s in modules.values()) / len(modules),
            "files_used": len(used), "files_all": len(table), "modules": len(modules),
            "every_stage": sorted(p for p, s in table.items() if len(s) == len(deps))}


def quoted(found: dict) -> dict:
    """The figures of :func:`figures` that the docs quote, as FIGURES_FILE holds them (means to 2 decimals)."""
    table, loader = found["table"], "src/evolforge/config/loader.py"
    return {"stages": found["stages"], "files_all": found["files_all"], "mean_all": round(found["mean_all"], 2),
            "modules": found["modules"], "mean_modules": round(found["mean_modules"], 2),
            "files_used": found["files_used"], "mean_used": round(found["mean_used"], 2),
            "every_stage": len(found["every_stage"]), "base": len(found["base"]), "loader": len(table[loader])}


def requote(figures: dict, root: Path = REPO) -> list[str]:
    """Write ``figures`` (:func:`quoted`) into the docs pages that quote them: each number followed by a
    ``<!--= FIGURES_FILE key -->`` marker becomes that key's value, at the number's decimals. Returns the pages
    changed."""
    marker = re.compile(rf"\d[\d,]*(?:\.(\d+))?(?=<!--= {re.escape(FIGURES_FILE)} (\w+) -->)")
    changed = []
    for page in sorted((root / "docs").rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = marker.sub(lambda m: f"{figures[m.group(2)]:.{len(m.group(1) or '')}f}", text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page.relative_to(root).as_posix())
    return changed


def report(found: dict, worst: int, every: bool) -> None:
    table, base, n = found["table"], found["base"], found["stages"]
    print(f"{n} stages; {found['files_used']} source files are deps of a stage, {found['files_all']} in {PACKAGE}")
    print(f"mean stages a one-line edit makes stale: {found['mean_all']:.2f} over every file of the package, "
          f"{found['mean_modules']:.2f} over its {found['modules']} Python modules, "
          f"{found['mean_used']:.2f} over the files stages depend on")
    print(f"files that stale every stage: {len(found['every_stage'])}")
    print(f"shared base ({len(base)} files): " + ", ".join(f"{p.removeprefix(PACKAGE + '/')} {len(table[p])}"
                                                        for p in sorted(base)))
    others = sorted((p for p in table if p not in base), key=lambda p: (-len(table[p]), p))
    print(f"the {worst} worst files outside the base:")
    for path in others[:worst]:
        print(f"  {len(table[path]):3d}  {path.removeprefix(PACKAGE + '/')}: {' '.join(table[path])}")
    if every:
        print("every file:")
        for path, found_ in table.items():
            print(f"  {len(found_):3d}  {path.removeprefix(PACKAGE + '/')}")


# ------------------------------------------------------------------------------------------------------------
# checking the prediction against real `dvc status`


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def copy_repo(root: Path, into: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored) in ``into``, in a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = root / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    subprocess.run(["git", "init", "-q"], cwd=into, check=True)
    return into


def lock_sources(copy: Path, deps: dict[str, set[str]]) -> None:
    """Write the copy's dvc.lock so every source dep of every stage holds the file's current md5 and size: a
    stage is then stale through a source file only when that file is edited."""
    lock_file = copy / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) if lock_file.exists() else {"schema": "2.0"}
    lock.setdefault("stages", {})
    for name, found in deps.items():
        entry = lock["stages"].setdefault(name, {"cmd": "", "deps": []})
        kept = [d for d in entry.get("deps") or [] if not d["path"].startswith(PACKAGE + "/")]
        sources = [{"path": p, "hash": "md5", "md5": _md5(copy / p), "size": (copy / p).stat().st_size}
                   for p in sorted(found) if p.startswith(PACKAGE + "/") and (copy / p).is_file()]
        entry["deps"] = sorted(kept + sources, key=lambda d: d["path"])
    lock_file.write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")


def dvc_status(copy: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=copy, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvc status failed in {copy}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout or "{}")


def measured(copy: Path, path: str, before: dict) -> list[str]:
    """The stages whose `dvc status` changes when one comment line is appended to ``path``."""
    file = copy / path
    original = file.read_bytes()
    line = b"\n# one-line edit\n" if file.suffix == ".py" else b"\n"
    try:
        file.write_bytes(original + line)
        after = dvc_status(copy)
    finally:
        file.write_bytes(original)
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def sample(found: dict, count: int, seed: int = 0) -> list[str]:
    """``count`` files at random, with the worst file outside the base, a base file and a file no stage runs."""
    table, base = found["table"], found["base"]
    others = sorted((p for p in table if p not in base), key=lambda p: (-len(table[p]), p))
    picks = [others[0], sorted(base)[0]] + [p for p in others if not table[p]][:1]
    rest = sorted(set(table) - set(picks))
    return picks + random.Random(seed).sample(rest, min(count, len(rest)))


def verify(found: dict, paths: list[str], root: Path = REPO) -> list[str]:
    """Problems: the files whose real `dvc status` disagrees with the prediction (empty when all agree)."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="evolforge-staleness-") as tmp:
        copy = copy_repo(root, Path(tmp))
        lock_sources(copy, expanded_deps(copy))
        before = dvc_status(copy)
        for path in paths:
            real = measured(copy, path, before)
            predicted = found["table"][path]
            print(f"  {path.removeprefix(PACKAGE + '/')}: predicted {len(predicted)}, dvc status {len(real)}"
                  + ("" if real == predicted else f"  DIFFERENT: {sorted(set(real) ^ set(predicted))}"))
            if real != predicted:
                problems.append(f"{path}: dvc status {real}, predicted {predicted}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worst", type=int, default=15, help="how many of the worst files outside the base to show")
    ap.add_argument("--all", action="store_true", help="show every file")
    ap.add_argument("--verify", type=int, metavar="N", help="check N random files (and 3 chosen) with dvc status")
    ap.add_argument("--files", nargs="+", metavar="PATH", help="check these files with dvc status")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write the figures the docs quote to {FIGURES_FILE}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {FIGURES_FILE} is stale")
    args = ap.parse_args(argv)
    found = figures()
    if args.check:
        if json.loads((REPO / FIGURES_FILE).read_text(encoding="utf-8")) != quoted(found):
            print(f"{FIGURES_FILE} is stale: run python tools/staleness.py --write (or make regen), which also "
                  "writes its figures into the pages that quote them", file=sys.stderr)
            return 1
        return 0
    report(found, args.worst, args.all)
    if args.write:
        (REPO / FIGURES_FILE).write_text(json.dumps(quoted(found), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {FIGURES_FILE}" + "".join(f", {page}" for page in requote(quoted(found))))
    paths = (args.files or []) + (sample(found, args.verify) if args.verify is not None else [])
    if not paths:
        return 0
    print(f"checked with dvc status on a copy ({len(paths)} files):")
    problems = verify(found, paths)
    print("the prediction matches dvc status" if not problems else "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
