"""dvc.yaml's stages as ``evolforge plan`` needs them: which roles each asks, which ``dvc repro`` will run (as DVC
decides), and running one's own command in a scratch copy of the workspace with nothing sent (the plan's dry run,
evolforge.llm.backends.dryrun); :mod:`evolforge.plan` turns what they asked into the plan's rows."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolforge.llm.backends.dryrun import DRY_RUN_ENV

MODEL_ROLES = {"scorer", "embedder", "base"}  # roles a stage loads itself (not chat calls through the cache)
NOTHING_AFTER = "so nothing after it runs for it"


@dataclass
class Stage:
    """One stage of dvc.yaml, as the planner needs it (paths relative to the repository root)."""

    name: str
    cmd: str
    wdir: str
    deps: list[str]
    outs: list[str]
    roles: set[str]
    always_changed: bool = False  # `dvc repro` runs it every time (dvc.yaml's always_changed, or no deps)

    @property
    def kind(self) -> str:
        """``llm`` (asks chat roles), ``model`` (loads or writes a model itself) or ``plain``."""
        if self.roles - MODEL_ROLES - {"*"}:
            return "llm"
        if self.roles or any(out == "models" or out.startswith("models/") for out in self.outs):
            return "model"
        return "plain"


def pipeline(root: Path) -> list[Stage]:
    """dvc.yaml's stages in file order (the pipeline's order), with the roles their params name."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = []
        for s in repo.index.stages:
            params = [p for d in s.deps for p in (getattr(d, "params", None) or [])]
            roles = {p.split(".", 1)[1] if "." in p else "*" for p in params if p == "roles" or p.startswith("roles.")}
            wdir = os.path.relpath(s.wdir, repo.root_dir)
            stages.append(Stage(s.addressing, s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd), wdir,
                                [_rel(repo.root_dir, s.wdir, d.def_path) for d in s.deps],
                                [_rel(repo.root_dir, s.wdir, o.def_path) for o in s.outs], roles,
                                bool(s.always_changed or s.is_callback)))  # no deps: DVC runs it each time too
        return stages


def changed_stages(root: Path, site_cache: Path | None = None) -> set[str]:
    """The stages ``dvc status`` reports for a change of their own (command, dependencies, parameters or
    outputs against dvc.lock, or never run), not for being ``always_changed`` alone. ``site_cache``: for a
    scratch copy (:func:`make_shadow`), its own hash database, and no git."""
    from dvc.repo import Repo

    config = {"core": {"site_cache_dir": str(site_cache), "no_scm": True}} if site_cache is not None else None
    with contextlib.chdir(root), Repo(str(root), config=config) as repo:  # stage names as from the root
        return {name for name, why in repo.status().items() if [w for w in why if w != "always changed"]}


def changed_outputs(shadow: Path, stage: Stage) -> list[str]:
    """The outputs of ``stage`` that differ in ``shadow`` from what dvc.lock records, hashed by DVC."""
    from dvc.repo import Repo

    # the copy's hash database goes with the copy; no_scm: the copy's .git is the workspace's
    config = {"core": {"site_cache_dir": str(shadow.parent / "dvc-site-cache"), "no_scm": True}}
    with Repo(str(shadow), config=config) as repo:
        [here] = repo.stage.collect(f"{shadow / 'dvc.yaml'}:{stage.name}")  # a bare name is read from the cwd
        return [_rel(repo.root_dir, here.wdir, o.def_path) for o in here.outs if o.workspace_status()]


def _rel(root: str, wdir: str, path: str) -> str:
    return os.path.normpath(os.path.relpath(os.path.join(wdir, path), root))


def feeds(upstream: Stage, downstream: Stage) -> bool:
    """True when one of ``upstream``'s outputs is (in) one of ``downstream``'s dependencies, or holds one."""
    return _reads(downstream, upstream.outs)


def _reads(stage: Stage, outs: list[str]) -> bool:
    """True when one of ``outs`` is (in) one of ``stage``'s dependencies, or holds one."""
    return any(d == o or d.startswith(o + "/") or o.startswith(d + "/") for o in outs for d in stage.deps)


def will_run(root: Path, stages: list[Stage], tmp: Path, cache: Path,
             notes: list[str], params: Path | None = None) -> tuple[list[Stage], list[Stage]]:
    """The stages ``dvc repro`` will run, in order, and the always-changed ones run in ``tmp / "probe"``.

    As DVC decides: a stage runs when it changed itself against dvc.lock (``changed_stages``) or when a stage
    that runs before it changes an output it depends on. A stage that runs is taken to change all its
    outputs, except an ``always_changed`` one that nothing before it changes: DVC runs it each time, and
    what runs after it depends on what it writes. A plain one is run in a scratch copy and its outputs
    hashed against dvc.lock; one that loads or writes a model is not run (the plan loads no model) and is
    taken to write what dvc.lock records while its own dependencies and parameters are unchanged. Either
    way, one that changes nothing is left out, and ``notes`` says so. ``params``: another file than the
    workspace's params.yaml to decide with (``evolforge plan --params``).
    """
    if params is None:
        own = changed_stages(root)
    else:  # as DVC would decide with that file as params.yaml: in a copy that has it there
        status = tmp / "status"
        make_shadow(root, status, [], params)
        own = changed_stages(status, tmp / "dvc-site-cache")
    probe = tmp / "probe"
    make_shadow(root, probe, [o for s in stages if s.always_changed and s.kind == "plain" for o in s.outs], params)
    changed: list[str] = []  # the outputs that change, as dvc.yaml names them
    todo: list[Stage] = []
    probed: list[Stage] = []
    for stage in stages:
        fed = _reads(stage, changed)
        if stage.always_changed and not fed and stage.kind == "model":
            outs = stage.outs if stage.name in own else []
            if not outs:
                notes.append(f"{stage.name}: always changed, so `dvc repro` runs it, but not the plan (it loads or "
                             f"writes a model); with its dependencies and parameters unchanged, its outputs are "
                             f"taken as dvc.lock records them, {NOTHING_AFTER}")
        elif stage.always_changed and not fed and stage.kind == "plain":
            _, error = dry_run(stage, probe, tmp, cache)
            if error:
                outs = stage.outs
                notes.append(f"{stage.name}: always changed; its run in the plan's copy failed ({error}), so its "
                             f"outputs are taken as changed")
            else:
                outs = changed_outputs(probe, stage)
                probed.append(stage)
                if not outs:
                    notes.append(f"{stage.name}: always changed, so `dvc repro` runs it; run in the plan's copy, "
                                 f"it writes what dvc.lock records, {NOTHING_AFTER}")
        elif fed or stage.name in own or stage.always_changed:
            outs = stage.outs
        else:
            continue
        if outs or stage.name in own:
            todo.append(stage)
            changed += outs
    return todo, probed


def chain(todo: list[Stage]) -> list[Stage]:
    """The stale stages the plan runs: LLM stages, and plain stages that carry one's outputs to another."""
    llm = [s for s in todo if s.kind == "llm"]
    return [s for s in todo if s.kind == "llm" or (
        s.kind == "plain" and any(reaches(todo, a, s) for a in llm) and any(reaches(todo, s, b) for b in llm))]


def reaches(stages: list[Stage], a: Stage, b: Stage) -> bool:
    """True when ``a``'s outputs reach ``b`` through the stages' dependencies."""
    frontier, seen = [a], {a.name}
    while frontier:
        here = frontier.pop()
        for s in stages:
            if s.name not in seen and feeds(here, s):
                if s.name == b.name:
                    return True
                seen.add(s.name)
                frontier.append(s)
    return False


def make_shadow(root: Path, shadow: Path, outs: list[str], params: Path | None = None) -> None:
    """A scratch copy of ``root``: every entry a symbolic link, but the folders that hold ``outs`` real
    folders (so a stage writes its outputs into the copy) and ``outs`` themselves absent; with ``params``, its
    ``params.yaml`` is that file."""
    outs = [Path(o) for o in outs]
    holders = {p for o in outs for p in o.parents if str(p) != "."}
    shadow.mkdir(parents=True)

    def mirror(rel: Path) -> None:
        for entry in sorted((root / rel).iterdir()):
            here = rel / entry.name
            if here in outs:
                continue
            if here in holders and entry.is_dir():
                (shadow / here).mkdir()
                mirror(here)
            else:
                (shadow / here).symlink_to(entry)

    mirror(Path("."))
    if params is not None:
        (shadow / "params.yaml").unlink(missing_ok=True)
        (shadow / "params.yaml").symlink_to(params)


def dry_run(stage: Stage, shadow: Path, tmp: Path, cache: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``stage``'s command in ``shadow`` with nothing sent; its calls as the LLM layer recorded them."""
    record = tmp / f"{stage.name.replace('@', '_')}.jsonl"
    record.touch()
    env = {**os.environ, DRY_RUN_ENV: str(record), "EVOLFORGE_CACHE": str(cache)}
    done = subprocess.run(stage.cmd, shell=True, cwd=shadow / stage.wdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return [], lines[-1] if lines else f"exit status {done.returncode}"
    calls: dict[tuple[str, str], dict[str, Any]] = {}  # one stage may ask one call several times (optimize steps)
    for line in record.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        key = (item["role"], item["label"])
        if key in calls:
            for name in ("requests", "prompt_tokens", "prompt_bytes", "max_tokens"):
                calls[key][name] += item[name]
            sent = (calls[key].get("sent"), item.get("sent"))  # HTTP requests, where each call's are known
            calls[key]["sent"] = None if None in sent else sum(sent)
        else:
            calls[key] = item
    return list(calls.values()), None


__all__ = ["MODEL_ROLES", "Stage", "changed_outputs", "changed_stages", "chain", "dry_run", "feeds", "make_shadow",
           "pipeline", "reaches", "will_run"]
