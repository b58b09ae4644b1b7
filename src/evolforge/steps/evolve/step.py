"""One round of instruction evolution, with elimination and recorded reasons.

Strategies (``evolve.strategy``):
- ``evol``: Evol-Instruct's hand-written methods, four in-depth (add_constraints, deepening, concretizing,
  reasoning) and optionally in-breadth, assigned ``round_robin`` (rotated by round, as the SLM paper does)
  or ``random`` (seeded, as the original Evol-Instruct does), by a hash of the item's lineage id and the
  round, never by row position (see :func:`evolforge.steps.common.evolving.assign_methods`). The evolver's whole answer
  is the new
  instruction.
- ``auto`` / ``auto_initial``: one evolving method text (optimized by the optimize stage, or the initial
  method) applied to every instruction; the new instruction is parsed from after
  ``#Finally Rewritten Instruction#:``; a missing marker is a failure (``evolve.missing_marker: fail``) or the
  whole answer is the rewrite (``whole_output``).

Elimination rules (``evolve.elimination``, reasons in ``failures``; docs/explanation/elimination.md) run in three
passes, first failure wins: on the evolved instruction (empty, truncated at ``max_tokens``, unchanged,
template words, chatter, repetitive, not an instruction), on an answer to it (sorry + short, stop words
only, rule F; by default the responder's answer, the one the respond stage keeps, when that loads no second
model), then the optional judge checks (not an instruction, information gain).
The evolver's finish reason is kept per row (``instruction_finish_reason``, "length": cut at ``max_tokens``),
and the answer the response rules read with its finish reason and its request's cache key (``check_*``).

Only ``instruction`` is evolved; ``input`` is carried over. Every item that enters a round leaves it as
exactly one row, ``evolved`` or ``failed`` (with ``failure_reason``), so in = evolved + failed. An LLM
call that failed (``prompt_too_long``, ``request_rejected``, ``retries_exhausted``) fails its item with
that reason, the server's message in ``failure_detail`` and a null ``raw_output``. The pool for the
next round is the evolved rows plus, with ``on_failure: keep_parent``, the parents of failed ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from evolforge.io import validation
from evolforge.io.columns import ROUND
from evolforge.config.bounds import ParamsError
from evolforge.steps.evolve.settings import EvolveSection, method_text
from evolforge.steps.respond.settings import RespondSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import EVOLVED, FAILED, LINEAGE, SETTINGS, make_id, read_table
from evolforge.steps.evolve.settings import INSTRUCTION_RULES, JUDGE_RULES, RESPONSE_RULES, EvolveSettings
from evolforge.core.stage import Outputs
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.registry import loads_nothing_more
from evolforge.steps.common import elimination
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.evolving import (BREADTH, assign_methods, evolving_messages, template_hash,
                                             worked_example_additions)
from evolforge.steps.common.responses import response_requests, response_sampling
from evolforge.steps.evolve.judge_checks import JUDGE_TEMPLATES, info_gain_verdicts, is_instruction_verdicts

STRATEGIES = ("evol", "auto", "auto_initial")
POOL = "pool.parquet"  # beside a round's table: what the next round evolves


def resolve_strategy(settings: EvolveSettings, method_meta: dict[str, Any]) -> tuple[EvolveSettings, str | None]:
    """The strategy to evolve with, and why it differs from ``settings.strategy`` (None when it does not).

    Rule: ``strategy: auto`` whose optimize stage found that the evolver cannot follow the method's
    format (``data/method/meta.json`` ``fallback: evol``, from ``optimize.on_unusable: evol``) evolves
    with Evol-Instruct's hand-written methods instead of a method that fails (almost) every item.

    >>> resolve_strategy(EvolveSettings(strategy="auto"), {"fallback": "evol", "fallback_reason": "no marker"})[1]
    'evolve.strategy auto falls back to evol: no marker'
    """
    if settings.strategy != "auto" or not method_meta.get("fallback"):
        return settings, None
    target = method_meta["fallback"]
    if target not in STRATEGIES:
        raise ValueError(f"data/method/meta.json fallback: {target!r} is not one of {STRATEGIES}")
    reason = method_meta.get("fallback_reason") or "the evolver cannot follow the optimized method's format"
    return dataclasses.replace(settings, strategy=target), f"evolve.strategy auto falls back to {target}: {reason}"


def resolve_check_role(check_role: str, evolver: Role, responder: Role) -> str:
    """``evolve.check_role`` as the stage applies it: ``auto`` is ``responder`` when the responder is a
    server or the evolver's own model (nothing more to load in the stage's process), else ``evolver``: two
    local models in one process (an hf model and a vLLM engine each claiming most of a GPU) may not fit."""
    if check_role != "auto":
        return check_role
    return "responder" if loads_nothing_more(responder, evolver) else "evolver"


def check_responder(settings: EvolveSettings, evolver: LLM, responder: LLM | None,
                    respond_sampling: Mapping[str, Any] | None) -> tuple[LLM, dict[str, Any]]:
    """Who answers the evolved instructions for the response rules, and the sampling it answers with.

    ``evolve.check_role: responder``: the responder role with ``respond_sampling`` (respond's
    ``temperature`` / ``max_tokens``, as the respond stage passes them), so the check's answer is the very
    request the respond stage makes for a surviving instruction and respond takes it from the round table
    (``check_response`` under its ``check_request_key``): one
    answer per instruction, as Evol-Instruct judges the response it keeps. ``evolver``: the evolver,
    greedy, at ``evolve.max_tokens``, an extra answer per surviving instruction that respond does not reuse.
    ``auto`` (default): see :func:`resolve_check_role`.
    """
    role = settings.check_role
    if role == "auto":
        role = "evolver" if responder is None else resolve_check_role(role, evolver.role, responder.role)
    if role == "evolver":
        return evolver, {"temperature": 0.0, "max_tokens": settings.max_tokens, "seed": settings.seed}
    if responder is None:
        raise ValueError("evolve.check_role responder: the response rules need the responder role")
    return responder, dict(respond_sampling or {})


@dataclasses.dataclass
class _Round:
    """One round's items and what each phase found, one entry per item in pool order."""

    items: list[dict[str, Any]]
    methods: list[str]
    raws: list[str | None]  # the evolver's whole answer; None where its call failed
    finishes: list[str | None]  # the evolver's finish_reason ("length": cut at max_tokens)
    candidates: list[str | None]  # the evolved instruction parsed from the answer; None where none was found
    reasons: list[str | None]  # why the item failed; None while it survives
    details: list[str | None]  # a failed call's message
    responses: list[str | None]  # the answer the response rules read; None where none was asked
    response_finishes: list[str | None]  # its finish_reason
    response_keys: list[str | None]  # its request's cache key (the respond stage reuses an answer whose key it asks)
    thinking: list[str | None]  # the evolver's thinking (a reasoning model; evolforge.llm.thinking), and the checks'
    response_thinking: list[str | None]

    def alive(self) -> list[int]:
        """Positions of the items that no rule has failed so far."""
        return [i for i, reason in enumerate(self.reasons) if reason is None]


def _round_methods(items: list[dict[str, Any]], round_index: int, settings: EvolveSettings,
                   method_text: str | None) -> list[str]:
    """The evolving method of each item: a hand-written one per item (evol), else the strategy's one text."""
    if settings.strategy == "evol":
        return assign_methods([it["root_id"] for it in items], round_index, settings.assignment,
                              settings.breadth, settings.seed)
    if not method_text:
        raise ValueError(f"evolve.strategy {settings.strategy}: no evolving method text given")
    return [settings.strategy] * len(items)


def _evolve_items(items: list[dict[str, Any]], methods: list[str], *, round_index: int, settings: EvolveSettings,
                  prompts: PromptLibrary, evolver: LLM, method_text: str | None) -> _Round:
    """Ask the evolver to rewrite each item's instruction with its method; the round before any rule runs
    (an item whose call failed already holds the call's reason)."""
    # the step format of an Auto Evol-Instruct method has its own budget and controls (evolve.method_*)
    evol = settings.strategy == "evol"
    controls, max_tokens = (settings.controls, settings.max_tokens) if evol else settings.step_format()
    # sample_index = the round: a parent kept after a failure gets a fresh attempt, not its cached one
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=max_tokens, seed=settings.seed,
                    sample_index=round_index, controls=evolver.role.controls.merged(
                        controls, "evolve.controls" if evol else "evolve.method_controls"))
    requests = [evolver.request(evolving_messages(prompts, m, it["instruction"], method_text, settings.few_shot),
                                **sampling) for m, it in zip(methods, items)]
    outs = evolver.generate(requests, desc=f"round {round_index}: evolve")
    raws = [None if c.failed else c.text for c in outs]
    candidates = [None if r is None else elimination.parse_final_instruction(r, settings.missing_marker)
                  if m in STRATEGIES else r.strip() for m, r in zip(methods, raws)]
    return _Round(items, methods, raws, finishes=[c.finish_reason for c in outs], candidates=candidates,
                  reasons=[c.failure_reason for c in outs], details=[c.error for c in outs],
                  responses=[None] * len(items), response_finishes=[None] * len(items),
                  response_keys=[None] * len(items), thinking=[c.thinking for c in outs],
                  response_thinking=[None] * len(items))


def _instruction_rules(state: _Round, settings: EvolveSettings, prompts: PromptLibrary,
                       method_text: str | None) -> None:
    """Phase 1: the text rules (:data:`INSTRUCTION_RULES`) on each evolved instruction, first failure wins
    (``method_text``: the Auto Evol-Instruct method the strategies' items were evolved with)."""
    switches = {k: settings.rule(k) for k in INSTRUCTION_RULES}
    added = worked_example_additions(prompts, state.methods) if settings.few_shot else frozenset()
    method_words = elimination.method_phrases(method_text if settings.strategy != "evol" else None)
    repetition = elimination.repetition_test(settings.repetition)
    for i in state.alive():
        candidate, finish = state.candidates[i], state.finishes[i]
        if state.methods[i] in STRATEGIES and candidate is None:
            # a marker that never came because the answer was cut off: the cut is the cause
            cut = switches["truncated"] and finish == "length"
            state.reasons[i] = elimination.TRUNCATED if cut else elimination.MISSING_MARKER
            continue
        state.reasons[i] = elimination.instruction_failure(
            state.items[i]["instruction"], candidate, finish_reason=finish, repetition=repetition,
            example_additions=added, method_phrases=method_words, breadth=state.methods[i] == BREADTH, **switches)


def _response_rules(state: _Round, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                    evolver: LLM, responder: LLM | None, respond_sampling: Mapping[str, Any] | None) -> None:
    """Phase 2: the rules on an answer to each surviving instruction (:data:`RESPONSE_RULES`); the answers
    are generated only when one of those rules is on."""
    response_rules = {k: settings.rule(k) for k in RESPONSE_RULES}
    alive = state.alive()
    if not (any(response_rules.values()) and alive):
        return
    checker, check_sampling = check_responder(settings, evolver, responder, respond_sampling)
    requests = response_requests(checker, prompts, [state.candidates[i] for i in alive],
                                 [state.items[i]["input"] for i in alive], **check_sampling)
    answers = checker.generate(requests, desc=f"round {round_index}: check")
    for i, request, answer in zip(alive, requests, answers):
        if answer.failed:  # the item cannot be checked: it fails with the call's reason
            state.reasons[i], state.details[i] = answer.failure_reason, f"check response: {answer.error}"
            continue
        state.responses[i], state.response_finishes[i] = answer.text, answer.finish_reason
        state.response_thinking[i] = answer.thinking
        state.response_keys[i] = checker.key(request)
        state.reasons[i] = elimination.response_failure(answer.text, **response_rules)


def _judge_rules(state: _Round, settings: EvolveSettings, prompts: PromptLibrary, judge: LLM | None) -> tuple[int, int]:
    """Phase 3: the judge's checks (:data:`JUDGE_RULES`), is it an instruction at all, then does it add
    anything. Returns how many verdicts went unparsed: (instruction check, equal check)."""
    if any(settings.rule(k) for k in JUDGE_RULES) and judge is None:
        raise ValueError("evolve.elimination.not_an_instruction_judge and info_gain need the judge role")
    unparsed_instruction = unparsed_equal = 0
    alive = state.alive()
    if settings.rule("not_an_instruction_judge") and alive:
        verdicts = is_instruction_verdicts(judge, prompts, [state.candidates[i] for i in alive])
        for i, asks in zip(alive, verdicts):
            unparsed_instruction += asks is None
            if asks is False:
                state.reasons[i] = elimination.JUDGED_NOT_AN_INSTRUCTION
    alive = state.alive()
    if settings.rule("info_gain") and alive:
        verdicts = info_gain_verdicts(judge, prompts, [state.items[i]["instruction"] for i in alive],
                                      [state.candidates[i] for i in alive])
        for i, same in zip(alive, verdicts):
            unparsed_equal += same is None
            if same:
                state.reasons[i] = elimination.NO_INFO_GAIN
    return unparsed_instruction, unparsed_equal


def _round_table(state: _Round, round_index: int, prompts: PromptLibrary, method_text: str | None,
                 model: str) -> pl.DataFrame:
    """The round table (:data:`evolforge.io.columns.ROUND`): one row per item, ``evolved`` or ``failed`` with its
    reason."""
    items, methods, n = state.items, state.methods, len(state.items)
    statuses = [EVOLVED if reason is None else FAILED for reason in state.reasons]
    texts = [cand if cand is not None else "" for cand in state.candidates]
    hashes = {m: template_hash(prompts, m, method_text) for m in set(methods)}
    return pl.DataFrame({
        "id": [make_id(it["id"], round_index, m, text, status)
               for it, m, text, status in zip(items, methods, texts, statuses)],
        "root_id": [it["root_id"] for it in items], "parent_id": [it["id"] for it in items], "round": [round_index] * n,
        "method": methods, "status": statuses, "failure_reason": state.reasons, "failure_detail": state.details,
        "instruction": texts, "input": [it["input"] for it in items], "output": [""] * n,
        "parent_instruction": [it["instruction"] for it in items], "raw_output": state.raws,
        "instruction_finish_reason": state.finishes, "check_response": state.responses,
        "check_finish_reason": state.response_finishes, "check_request_key": state.response_keys,
        "evolve_template_hash": [hashes[m] for m in methods], "evolver_model": [model] * n,
        "instruction_thinking": state.thinking, "check_thinking": state.response_thinking,
    }, schema=ROUND)


def _next_pool(pool: pl.DataFrame, table: pl.DataFrame, on_failure: str) -> pl.DataFrame:
    """The next round's pool, in pool order: each evolved item and, with ``keep_parent``, the parent of each
    failed one."""
    evolved = pl.Series([status == EVOLVED for status in table["status"].to_list()], dtype=pl.Boolean)
    pool_out = _as_pool(table)
    if on_failure == "keep_parent":
        parents = _as_pool(pool)
        return pl.DataFrame([pool_out[c].zip_with(evolved, parents[c]) for c in POOL_COLUMNS])
    return pool_out.filter(evolved)


def evolve_round(pool: pl.DataFrame, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                 evolver: LLM, method_text: str | None = None, judge: LLM | None = None,
                 responder: LLM | None = None,
                 respond_sampling: Mapping[str, Any] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Evolve every item of ``pool`` once. Returns (round table, next pool, summary).

    ``responder`` and ``respond_sampling`` answer the evolved instructions for the response rules when
    ``evolve.check_role`` comes to ``responder`` (see :func:`check_responder`)."""
    items = pool.to_dicts()
    methods = _round_methods(items, round_index, settings, method_text)
    state = _evolve_items(items, methods, round_index=round_index, settings=settings, prompts=prompts,
                          evolver=evolver, method_text=method_text)
    _instruction_rules(state, settings, prompts, method_text)
    _response_rules(state, round_index=round_index, settings=settings, prompts=prompts, evolver=evolver,
                    responder=responder, respond_sampling=respond_sampling)
    unparsed_instruction, unparsed_equal = _judge_rules(state, settings, prompts, judge)
    table = _round_table(state, round_index, prompts, method_text, evolver.label)
    pool_out = _next_pool(pool, table, settings.on_failure)
    summary = round_summary(table)
    summary.update(equal_check_unparsed=unparsed_equal, instruction_check_unparsed=unparsed_instruction,
                   next_pool=pool_out.height)
    return table, pool_out, summary


POOL_COLUMNS = LINEAGE + ["instruction", "input", "output"]  # what an item carries into the next round


def _as_pool(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s pool columns, typed as the round table's (null where ``frame`` lacks one)."""
    return frame.select([(pl.col(c) if c in frame.columns else pl.lit(None)).cast(ROUND[c]).alias(c)
                         for c in POOL_COLUMNS])


def round_summary(table: pl.DataFrame) -> dict:
    """Counts (in = evolved + failed), failures by reason, and mean instruction length growth."""
    evolved = table.filter(pl.col("status") == EVOLVED)
    reasons = Counter(r for r in table["failure_reason"].to_list() if r is not None)
    growth = None
    if evolved.height:
        ratio = evolved.select(
            pl.col("instruction").str.split(" ").list.len() / pl.col("parent_instruction").str.split(" ").list.len())
        growth = float(ratio.to_series().mean())
    return {"in": table.height, "evolved": evolved.height, "failed": table.height - evolved.height,
            "failed_by_reason": dict(sorted(reasons.items())), "mean_length_growth": growth,
            "evolver_cut_at_max_tokens": int((table["instruction_finish_reason"] == "length").sum())}


def read_pool(src: Path) -> pl.DataFrame:
    """A round's pool is its predecessor's pool.parquet; the seed table is round 1's pool."""
    table = pl.read_parquet(src / POOL) if (src / POOL).exists() else read_table(src)
    validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input"]) + validation.unique("id"), src)
    return table


def open_checkers(llms: RoleLLMs, settings: EvolveSettings, evolver: LLM,
                  round_name: str) -> tuple[LLM | None, LLM | None, EvolveSettings]:
    """(judge, responder, settings with ``check_role`` resolved): the roles the round's checks ask, None
    where no check needs one. Nothing loads until a request misses the cache."""
    judge_checks = [k for k in JUDGE_RULES if settings.rule(k)]
    judge = llms["judge"] if judge_checks else None
    if judge is not None and not loads_nothing_more(judge.role, evolver.role):
        print(f"{round_name}: the judge checks ({', '.join(judge_checks)}) load roles.judge "
              f"({judge.role.model}) beside roles.evolver ({evolver.role.model}) in this process; if the two "
              f"do not fit in memory together, serve the judge (backend openai) or turn those checks off")
    responder = None
    if settings.check_role != "evolver" and any(settings.rule(k) for k in RESPONSE_RULES):
        responder = llms["responder"]
        settings = dataclasses.replace(settings,
                                       check_role=resolve_check_role(settings.check_role, evolver.role, responder.role))
        if settings.check_role == "evolver":  # auto, and the responder is another local model
            responder = None
    return judge, responder, settings


def run(round_name: str, src: str | Path, method: str | Path, section: EvolveSection, respond: RespondSettings,
        llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The evolve stage for the round ``round_name`` of ``evolve.rounds`` (``section``): the pool of ``src``
    evolved once by ``llms["evolver"]``, with the method of ``method`` (method.txt; its meta.json's ``fallback``
    for strategy auto); the response checks answer with ``respond``'s sampling."""
    settings = EvolveSettings(**{f.name: getattr(section, f.name) for f in dataclasses.fields(EvolveSettings)})
    if round_name not in section.rounds:
        raise ParamsError([f"evolve.rounds: no round named {round_name!r} (rounds: {', '.join(section.rounds)})"])
    index = section.rounds[round_name]["index"]
    pool = read_pool(Path(src))
    requested = settings.strategy
    method_meta = Path(method).with_name("meta.json")
    settings, fallback = resolve_strategy(settings, json.loads(method_meta.read_text(encoding="utf-8"))
                                          if requested == "auto" and method_meta.exists() else {})
    if fallback:
        print(f"{round_name}: {fallback}")
    text = method_text(settings.strategy, Path(method))
    evolver = llms["evolver"]
    judge, responder, settings = open_checkers(llms, settings, evolver, round_name)
    table, next_pool, summary = evolve_round(
        pool, round_index=index, settings=settings, prompts=prompts, evolver=evolver, method_text=text, judge=judge,
        responder=responder, respond_sampling=response_sampling(respond))
    assert summary["in"] == summary["evolved"] + summary["failed"] == pool.height
    roles = {name: llm
             for name, llm in {"evolver": evolver, "responder": responder, "judge": judge}.items() if llm is not None}
    summary.update(round=round_name, index=index, strategy=settings.strategy, requested_strategy=requested,
                   fallback=fallback, check_role=settings.check_role,
                   calls=sum(llm.stats["calls"] for llm in roles.values()),
                   cache_hits=sum(llm.stats["cache_hits"] for llm in roles.values()),
                   llm={name: llm.stats for name, llm in roles.items()})
    meta = {"round": round_name, "index": index, "model": evolver.label, "model_identity": evolver.identity,
            "template_hashes": {n: prompts.hash(n) for n in prompts.names
                                if n.startswith(("evolve/", "respond/", "optimize/evolve")) or n in JUDGE_TEMPLATES},
            "method_text": text, SETTINGS: dataclasses.asdict(settings), "requested_strategy": requested,
            "fallback": fallback}
    return Outputs(summary,
                   f"{round_name}: {summary['in']} in, {summary['evolved']} evolved, {summary['failed']} failed "
                            f"{summary['failed_by_reason']}; {summary['calls']} calls, "
                            f"{summary['cache_hits']} cache hits",
                   table=table, meta=meta, tables={POOL: next_pool})
