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

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evolforge.llm.cache import DEFAULT_CACHE_PATH
from evolforge.schema import load_params
from evolforge.config.roles import Role, load_role
from evolforge.llm.budget import SpendLedger, cost_of, priced
from evolforge.llm.backends.dryrun import unpinned_note
from evolforge.plan.stages import Stage, chain, dry_run, make_shadow, pipeline, reaches, will_run


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
    # the HTTP requests a server role sends for them (a ranking on vLLM's server: its trie's requests per item);
    # None for an in-process role, or where the answers decide (a walk of top_logprobs)
    sent: int | None = None


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
        to_run = chain(todo)
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
            after = [s.name for s in skipped if reaches(stages, s, stage)]
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


def _cache_path(root: Path, params: dict[str, Any]) -> Path:
    """The call cache the stages would open (``EVOLFORGE_CACHE`` wins, as in evolforge.llm.cache.open_cache)."""
    path = Path(os.environ.get("EVOLFORGE_CACHE") or (params.get("cache") or {}).get("path") or DEFAULT_CACHE_PATH)
    return path if path.is_absolute() else root / path


def estimate(stage: str, call: dict[str, Any], params: dict[str, Any], ledger: SpendLedger | None) -> Row:
    """A row of the plan: one call's dry-run counts, with the expected completion, cost and time. The role is
    priced as the stage had it (the dry run records its prices): a stage may make a role params.yaml does not
    name (compare's ``compare_tuned`` and ``compare_other``, from roles.base)."""
    role = _priced_role(call, params)
    row = Row(stage, call["role"], call["label"], call["requests"], call["prompt_tokens"], call["max_tokens"],
              counted=call["counted"], pinned=call.get("pinned", True), sent=call.get("sent"))
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


__all__ = ["Plan", "Row", "estimate", "make_plan"]
