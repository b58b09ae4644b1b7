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

Elimination rules (``evolve.elimination``, reasons in ``failures``; docs/explanation/elimination.md) run in four
passes, first failure wins: on the evolved instruction (empty, truncated at ``max_tokens``, unchanged,
template words, chatter, repetitive, not an instruction, a stated answer or a dropped given, the method handed
over), on its meaning beside its parent's (the same problem again, by roles.embedder), on an answer to it (sorry +
short, stop words only, rule F, the parent's answer again; by default the responder's answer, the one the respond
stage keeps, when that loads no second model), then the optional judge checks (not an instruction, information
gain). With ``evolve.rewrites_per_instruction`` above 1 each instruction gets that many rewrites, every rule runs
on each, and the surviving one the judge scores hardest is kept (:mod:`evolforge.steps.evolve.hardest`).
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
from evolforge.steps.evolve.settings import JUDGE_RULES, RESPONSE_RULES, STRATEGIES, EvolveSettings
from evolforge.core.stage import Outputs
from evolforge.llm.cached import LLM
from evolforge.llm.registry import loads_nothing_more
from evolforge.steps.common.embedding import Embed
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.evolving import EvolvingCall, assign_methods, template_hash
from evolforge.steps.common.responses import response_sampling
from evolforge.steps.evolve.checks import (RoundState, instruction_rules, judge_rules, meaning_rules,
                                          resolve_check_role, response_rules)
from evolforge.steps.common.difficulty import difficulty_scores
from evolforge.steps.evolve.hardest import Hardness, candidate_sample_index, keep_hardest
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.evolve.judge_checks import JUDGE_TEMPLATES

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
                  prompts: PromptLibrary, evolver: LLM, method_text: str | None) -> RoundState:
    """Ask the evolver to rewrite each item's instruction with its method, ``rewrites_per_instruction`` times
    (instruction-major: rewrite j of item i at i x k + j); the round before any rule runs (a rewrite whose call
    failed already holds the call's reason)."""
    # the step format of an Auto Evol-Instruct method has its own budget and controls (evolve.method_*)
    call = EvolvingCall.from_evolve(settings, step_format=settings.strategy != "evol", temperature=settings.temperature,
                           top_p=settings.top_p, seed=settings.seed)
    k = settings.rewrites_per_instruction
    items, methods = [it for it in items for _ in range(k)], [m for m in methods for _ in range(k)]
    # sample_index = the round: a parent kept after a failure gets a fresh attempt, not its cached one; each further
    # rewrite of an instruction its own (hardest.candidate_sample_index)
    requests = call.requests(evolver, prompts, methods, [it["instruction"] for it in items], [method_text] * len(items),
                             [candidate_sample_index(round_index, p % k) for p in range(len(items))])
    outs = evolver.generate(requests, desc=f"round {round_index}: evolve")
    evolutions = [call.parse(c, m) for c, m in zip(outs, methods)]
    raws, candidates = [e.raw for e in evolutions], [e.instruction for e in evolutions]
    return RoundState(items, methods, raws, finishes=[c.finish_reason for c in outs], candidates=candidates,
                  reasons=[c.failure_reason for c in outs], details=[c.error for c in outs],
                  responses=[None] * len(items), response_finishes=[None] * len(items),
                  response_keys=[None] * len(items), thinking=[c.thinking for c in outs],
                  response_thinking=[None] * len(items))


def _round_table(state: RoundState, round_index: int, prompts: PromptLibrary, method_text: str | None,
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
    """The next round's pool, in pool order: each evolved item (with the answer its check got as ``output``) and,
    with ``keep_parent``, the parent of each failed one."""
    evolved = pl.Series([status == EVOLVED for status in table["status"].to_list()], dtype=pl.Boolean)
    # an evolved item carries the answer its check got: the next round's same_answer compares with it
    pool_out = _as_pool(table).with_columns(output=table["check_response"].fill_null(""))
    if on_failure == "keep_parent":
        parents = _as_pool(pool)
        return pl.DataFrame([pool_out[c].zip_with(evolved, parents[c]) for c in POOL_COLUMNS])
    return pool_out.filter(evolved)


def evolve_round(pool: pl.DataFrame, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                 evolver: LLM, method_text: str | None = None, judge: LLM | None = None,
                 responder: LLM | None = None, respond_sampling: Mapping[str, Any] | None = None,
                 embed: Embed | None = None, hardness: Hardness | None = None,
                 answer_pool: bool = False) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Evolve every item of ``pool`` once. Returns (round table, next pool, summary).

    ``responder`` and ``respond_sampling`` answer the evolved instructions for the response rules when
    ``evolve.check_role`` comes to ``responder`` (see :func:`check_responder`); ``embed`` (roles.embedder) reads
    the meanings for ``same_problem``; ``hardness`` (the judge's difficulty score) chooses among the surviving
    rewrites of an instruction when ``rewrites_per_instruction`` is above 1 (:mod:`evolforge.steps.evolve.hardest`).
    ``answer_pool``: the pool's own instructions are ones the respond stage answers (the seeds, with
    ``respond.include_seed``): the responder's check call asks them too (:func:`response_rules`' ``ahead``);
    ``answered_ahead`` in the summary counts them."""
    items = pool.to_dicts()
    methods = _round_methods(items, round_index, settings, method_text)
    state = _evolve_items(items, methods, round_index=round_index, settings=settings, prompts=prompts,
                          evolver=evolver, method_text=method_text)
    instruction_rules(state, settings, prompts, method_text)
    meaning_rules(state, settings, embed)
    ahead = [(it["instruction"], it["input"]) for it in items] if answer_pool else []
    answered_ahead = response_rules(state, round_index=round_index, settings=settings, prompts=prompts,
                                    evolver=evolver, responder=responder, respond_sampling=respond_sampling,
                                    ahead=ahead)
    unparsed_instruction, unparsed_equal = judge_rules(state, settings, prompts, judge)
    chosen: dict = {}
    if settings.rewrites_per_instruction > 1:
        state, chosen = keep_hardest(state, settings.rewrites_per_instruction, hardness)
    table = _round_table(state, round_index, prompts, method_text, evolver.label)
    pool_out = _next_pool(pool, table, settings.on_failure)
    summary = round_summary(table)
    summary.update(equal_check_unparsed=unparsed_equal, instruction_check_unparsed=unparsed_instruction,
                   next_pool=pool_out.height, answered_ahead=answered_ahead, **chosen)
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


def reads_seed(src: Path) -> bool:
    """Whether the round reading ``src`` evolves the seed table (a round folder holds its pool.parquet)."""
    return not (src / POOL).exists()


def read_pool(src: Path) -> pl.DataFrame:
    """A round's pool is its predecessor's pool.parquet; the seed table is round 1's pool."""
    table = read_table(src) if reads_seed(src) else pl.read_parquet(src / POOL)
    validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input"]) + validation.unique("id"), src)
    return table


def open_checkers(llms: RoleLLMs, settings: EvolveSettings, evolver: LLM,
                  round_name: str) -> tuple[LLM | None, LLM | None, EvolveSettings]:
    """(judge, responder, settings with ``check_role`` resolved): the roles the round's checks ask, None
    where no check needs one. Nothing loads until a request misses the cache."""
    judge_checks = [k for k in JUDGE_RULES if settings.rule(k)]
    judge_checks += ["the hardest rewrite"] if settings.rewrites_per_instruction > 1 else []
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


def judge_hardness(judge: LLM | None, prompts: PromptLibrary, judged: JudgeSettings | None) -> Hardness | None:
    """The judge's 0-100 difficulty of some questions, asked as the judge stage asks its score (``judged``: the
    judge section), so its answer for a kept rewrite is the judge stage's; None without a judge."""
    if judge is None or judged is None:
        return None
    return lambda questions: difficulty_scores(questions, judge, prompts, score_prompt=judged.score_prompt,
                                               max_tokens=judged.max_tokens, constrain=judged.constrain,
                                               probabilities=judged.probabilities, desc="choose the hardest")


def run(round_name: str, src: str | Path, method: str | Path, section: EvolveSection, respond: RespondSettings,
        llms: RoleLLMs, prompts: PromptLibrary, embed: Embed | None = None,
        judged: JudgeSettings | None = None) -> Outputs:
    """The evolve stage for the round ``round_name`` of ``evolve.rounds`` (``section``): the pool of ``src``
    evolved once by ``llms["evolver"]``, with the method of ``method`` (method.txt; its meta.json's ``fallback``
    for strategy auto); the response checks answer with ``respond``'s sampling, ``embed`` (roles.embedder) reads
    the meanings for ``same_problem``, and ``judged`` (the judge section) says how the judge scores rewrites when
    ``rewrites_per_instruction`` is above 1."""
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
        responder=responder, respond_sampling=response_sampling(respond), embed=embed,
        hardness=judge_hardness(judge, prompts, judged), answer_pool=respond.include_seed and reads_seed(Path(src)))
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
