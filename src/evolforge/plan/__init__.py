"""``evolforge plan``: what the stale stages will ask of which model, and what that costs -- before paying.

For the stages ``dvc repro`` will run (``will_run``: as DVC decides, from each stage's own changes against
dvc.lock and the outputs the stages before it change; an always-changed stage that rewrites what dvc.lock
records is left out), in pipeline order, the planner runs each LLM stage's own command with
``EVOLFORGE_DRY_RUN`` set (evolforge.llm.backends.dryrun) in a scratch copy of the workspace: every file linked, but
the outputs of the stages it runs written fresh in the copy, so the workspace, its DVC state and the call
cache are never changed. Each generate call looks its requests up in the call cache
and records only the ones the cache cannot answer, with their prompt tokens; nothing is sent.

The first stale LLM stage's requests are therefore counted exactly (the ones that depend only on its
inputs; calls that depend on answers within the stage, like an evolution's checks, are asked of stand-in
answers). A stage after a stale LLM stage reads that stage's dry-run outputs, made of stand-ins: recent
real answers of the same role and call (evolforge.llm.budget keeps 32 per call), each made unique, so an
evolution round's survivors -- and with them the next round's requests -- come out at about the rate the
previous runs' answers survived. Stages without an LLM role that lie between two stale LLM stages
(dedup, decontaminate, ...) run for real in the copy; stages that load a model of their own (scorer,
embedder, the fine-tuned model) or write models are not run, and a stage after one of them is planned on
its previous outputs (the plan says so).

Per stage, role and call: requests, prompt tokens (counted as docs/explanation/llm.md says), completion tokens as an
upper bound (``max_tokens``) and an expected value (the mean completion length recorded for that role
and call), the cost from the role's prices, and the time from the role's recorded seconds per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evolforge.llm.cache import DEFAULT_CACHE_PATH
from evolforge.schema import load_params
from evolforge.config.roles import Role, load_role
from evolforge.llm.budget import SpendLedger, cost_of, priced
from evolforge.llm.backends.dryrun import DRY_RUN_ENV, unpinned_note

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


@dataclass
class Row:
    """One stage's calls of one role and label."""

    stage: str
    role: str
    label: str
    requests: int
    prompt_tokens: int
    completion_tokens_max: int
    completion_tokens_expected: int | None = None
    cost_max: float | None = None
    cost_expected: float | None = None
    seconds: float | None = None
    counted: str = ""  # how prompt tokens were counted (tokenizer | observed ratio | bytes/4)
    # of prompt_tokens, those the provider's prompt cache is expected to serve (at the share observed for this
    # role and call; priced at price_per_mtok_cached_prompt in cost_expected); None when none was observed
    cached_prompt_tokens_expected: int | None = None
    pinned: bool = True  # False: models/identity.json does not pin the role as params name it yet (estimates)


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # the stages `dvc repro` will run, in order (will_run)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # stages whose dry run failed: not counted

    def total(self) -> dict[str, Any]:
        def add(name: str) -> Any:
            values = [getattr(r, name) for r in self.rows]
            known = [v for v in values if v is not None]
            return sum(known) if known else None

        return {k: add(k) for k in ("requests", "prompt_tokens", "completion_tokens_max",
                                    "completion_tokens_expected", "cost_max", "cost_expected", "seconds")}

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "total": self.total(), "stale": self.stale,
                "stages_with_calls": sorted({r.stage for r in self.rows}, key=self.stale.index), "notes": self.notes,
                "failed": self.failed}


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


def make_plan(root: str | Path = ".", only: list[str] | None = None, params_file: str = "params.yaml") -> Plan:
    """The plan of the stages ``dvc repro`` will run in the pipeline at ``root`` (or of ``only``, stale or not)."""
    root = Path(root).resolve()
    stages = pipeline(root)
    names = {s.name for s in stages}
    unknown = sorted(set(only or []) - names)
    if unknown:
        raise ValueError(f"no such stage in dvc.yaml: {', '.join(unknown)} (stages: "
                         f"{', '.join(s.name for s in stages)})")
    params_path = (root / params_file).resolve()
    params = load_params(params_path)
    # another params file than the workspace's: every copy the plan runs in has it as its params.yaml
    swap = params_path if params_path != (root / "params.yaml").resolve() else None
    cache = _cache_path(root, params)
    ledger = SpendLedger(cache) if cache.exists() else None
    plan = Plan()
    skipped: list[Stage] = []
    with tempfile.TemporaryDirectory(prefix="evolforge-plan-") as tmp:
        tmp = Path(tmp)
        if not cache.exists():  # an empty stand-in: the plan creates nothing in the workspace
            cache = tmp / "cache.sqlite"
        if only:
            todo, probed = [s for s in stages if s.name in only], []
        else:
            todo, probed = will_run(root, stages, tmp, cache, plan.notes, swap)
        plan.stale = [s.name for s in todo]
        to_run = _chain(todo)
        kept = [s for s in probed if s not in to_run]  # what they wrote in will_run's copy goes on
        shadow = tmp / "work"
        make_shadow(root, shadow, [o for s in to_run + kept for o in s.outs], swap)
        for out in [o for s in kept for o in s.outs]:
            os.replace(tmp / "probe" / out, shadow / out)
        for stage in todo:
            if stage not in to_run:
                if stage.kind == "model":
                    skipped.append(stage)
                continue
            after = [s.name for s in skipped if _reaches(stages, s, stage)]
            if after and stage.kind == "llm":
                plan.notes.append(f"{stage.name}: planned on the previous outputs of {', '.join(after)} "
                                  f"(stale, not run by the plan: it loads or writes a model)")
            calls, error = dry_run(stage, shadow, tmp, cache)
            if error:
                plan.notes.append(f"{stage.name}: the dry run failed ({error}); its calls are not counted")
                plan.failed.append(stage.name)
                continue
            if stage.kind == "llm":
                plan.rows += [estimate(stage.name, call, params, ledger) for call in calls]
    if swap is not None:
        plan.notes.append(f"planned with {params_file} as params.yaml")
    if ledger is not None:
        ledger.close()
    plan.notes += unpinned_note(sorted({r.role for r in plan.rows if not r.pinned}))
    later = [r for r in plan.rows if r.stage != plan.rows[0].stage] if plan.rows else []
    if later:
        plan.notes.append(f"exact: the requests of {plan.rows[0].stage} that depend only on its inputs; its calls "
                          f"on stand-in answers and every later stage are estimates (see docs/explanation/llm.md)")
    return plan


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


def _chain(todo: list[Stage]) -> list[Stage]:
    """The stale stages the plan runs: LLM stages, and plain stages that carry one's outputs to another."""
    llm = [s for s in todo if s.kind == "llm"]
    return [s for s in todo if s.kind == "llm" or (
        s.kind == "plain" and any(_reaches(todo, a, s) for a in llm) and any(_reaches(todo, s, b) for b in llm))]


def _reaches(stages: list[Stage], a: Stage, b: Stage) -> bool:
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


def _cache_path(root: Path, params: dict[str, Any]) -> Path:
    """The call cache the stages would open (``EVOLFORGE_CACHE`` wins, as in evolforge.llm.cache.open_cache)."""
    path = Path(os.environ.get("EVOLFORGE_CACHE") or (params.get("cache") or {}).get("path") or DEFAULT_CACHE_PATH)
    return path if path.is_absolute() else root / path


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
        else:
            calls[key] = item
    return list(calls.values()), None


def estimate(stage: str, call: dict[str, Any], params: dict[str, Any], ledger: SpendLedger | None) -> Row:
    """A row of the plan: one call's dry-run counts, with the expected completion, cost and time. The role is
    priced as the stage had it (the dry run records its prices): a stage may make a role params.yaml does not
    name (compare's ``compare_tuned`` and ``compare_other``, from roles.base)."""
    role = _priced_role(call, params)
    row = Row(stage, call["role"], call["label"], call["requests"], call["prompt_tokens"], call["max_tokens"],
              counted=call["counted"], pinned=call.get("pinned", True))
    if ledger is not None:
        seen = ledger.spent(role=role.name, label=call["label"])
        if not seen.calls:
            seen = ledger.spent(role=role.name)  # this call never ran: the role's mean over its calls
        if row.completion_tokens_max == 0:  # ranked answers: nothing is decoded
            row.completion_tokens_expected = 0
        elif seen.calls and seen.completion_tokens:
            mean = seen.completion_tokens / seen.calls
            row.completion_tokens_expected = min(round(mean * row.requests), row.completion_tokens_max)
        if seen.calls and seen.seconds:
            row.seconds = seen.seconds / seen.calls * row.requests
        if seen.prompt_tokens and seen.cached_prompt_tokens:
            share = seen.cached_prompt_tokens / seen.prompt_tokens
            row.cached_prompt_tokens_expected = round(row.prompt_tokens * share)
    if priced(role):
        row.cost_max = cost_of(role, row.prompt_tokens, row.completion_tokens_max)  # no prompt cache assumed
        if row.completion_tokens_expected is not None:
            row.cost_expected = cost_of(role, row.prompt_tokens, row.completion_tokens_expected,
                                        row.cached_prompt_tokens_expected or 0)
    return row


def _priced_role(call: dict[str, Any], params: dict[str, Any]) -> Role:
    """The role of a dry-run call, with the prices the stage gave it (params.yaml's when not recorded)."""
    prices = call.get("prices")
    if prices is None:
        return load_role(params, call["role"])
    return Role(name=call["role"], backend=call.get("backend", "openai"), model=call["role"],
                price_per_mtok_prompt=prices.get("prompt"), price_per_mtok_completion=prices.get("completion"),
                price_per_mtok_cached_prompt=prices.get("cached_prompt"))


__all__ = ["Plan", "Row", "Stage", "changed_outputs", "changed_stages", "dry_run", "estimate", "feeds", "make_plan",
           "make_shadow", "pipeline", "will_run"]
