"""One round of instruction evolution, with elimination and recorded reasons.

Strategies (``evolve.strategy``):
- ``evol``: Evol-Instruct's hand-written methods, four in-depth (add_constraints, deepening, concretizing,
  reasoning) and optionally in-breadth, assigned ``round_robin`` (rotated by round, as the SLM paper does)
  or ``random`` (seeded, as the original Evol-Instruct does), by a hash of the item's lineage id and the
  round, never by row position (see :func:`assign_methods`). The evolver's whole answer is the new
  instruction.
- ``auto`` / ``auto_initial``: one evolving method text (optimized by the optimize stage, or the initial
  method) applied to every instruction; the new instruction is parsed from after
  ``#Finally Rewritten Instruction#:`` and a missing marker is a failure.

Elimination rules (``evolve.elimination``, reasons in ``failures``; docs/elimination.md) run in three
passes, first failure wins: on the evolved instruction (empty, truncated at ``max_tokens``, unchanged,
template words, chatter, repetitive, not an instruction), on an answer to it (sorry + short, stop words
only, rule F; by default the responder's answer, the one the respond stage keeps, when that loads no second
model), then the optional judge checks (not an instruction, information gain).
The evolver's ``finish_reason`` is kept per row ("length": cut at ``max_tokens``).

Only ``instruction`` is evolved; ``input`` is carried over. Every item that enters a round leaves it as
exactly one row, ``evolved`` or ``failed`` (with ``failure_reason``), so in = evolved + failed. An LLM
call that failed (``prompt_too_long``, ``request_rejected``, ``retries_exhausted``) fails its item with
that reason, the server's message in ``failure_detail`` and a null ``raw_output``. The pool for the
next round is the evolved rows plus, with ``on_failure: keep_parent``, the parents of failed ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import polars as pl
import yaml

from evolforge.steps import elimination
from evolforge.llm import LLM, Role, loads_nothing_more
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import EVOLVED, FAILED, LINEAGE, make_id
from evolforge.steps.respond import respond
from evolforge.core.settings import RULES, EvolveSection, EvolveSettings  # noqa: F401  (part of this module's API)

IN_DEPTH = ["add_constraints", "deepening", "concretizing", "reasoning"]
BREADTH = "breadth"
STRATEGIES = ("evol", "auto", "auto_initial")
INSTRUCTION_RULES = ("empty", "truncated", "unchanged", "template_words", "chatter", "repetitive", "not_an_instruction")
RESPONSE_RULES = ("sorry_short", "stopwords_only", "rule_f")  # rules on an answer to the evolved instruction
JUDGE_RULES = ("not_an_instruction_judge", "info_gain")  # checks that ask the judge role
IS_INSTRUCTION_TEMPLATE = "judge/is_instruction.j2"
METHOD_TEMPLATE = "optimize/evolve_with_method.j2"


def repetition_test(repetition: dict) -> elimination.RepetitionTest:
    """The thresholds of ``evolve.repetition`` / ``respond.repetition`` (defaults where params say nothing)."""
    return elimination.RepetitionTest(**repetition)


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


def _hash_int(*parts: Any) -> int:
    return int(hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()[:15], 16)


def assign_methods(ids: Sequence[str], round_index: int, assignment: str = "round_robin", breadth: bool = True,
                   seed: int = 0) -> list[str]:
    """Evol-Instruct method per item, from the item's id and the round only -- never its row position, so
    adding, removing or reordering items leaves every other item's method (and its cached calls) alone.

    ``round_robin``: each lineage walks the methods in order, one step per round, from a start fixed by
    a hash of its id (pass the items' ``root_id``): a chain never meets the same method twice in a row and
    meets every method once in ``len(methods)`` rounds, as the SLM paper's rotation by round intends.
    Over many items each method gets an equal share up to sampling noise (the hash is uniform).
    ``random``: an independent draw per (seed, round, item), as the original Evol-Instruct does.

    >>> assign_methods(["a", "b"], 1, breadth=False) == [assign_methods(["a"], 1, breadth=False)[0],
    ...                                                   assign_methods(["b"], 1, breadth=False)[0]]
    True
    """
    methods = IN_DEPTH + ([BREADTH] if breadth else [])
    if assignment == "random":
        return [methods[_hash_int(seed, round_index, i) % len(methods)] for i in ids]
    return [methods[(_hash_int(i) + round_index) % len(methods)] for i in ids]


def evolving_prompt(prompts: PromptLibrary, method: str, instruction: str, method_text: str | None = None) -> str:
    """The evolving prompt for ``instruction``: Evol-Instruct's breadth or in-depth template for those
    methods, otherwise (an Auto Evol-Instruct strategy) the evolving method ``method_text``."""
    if method == BREADTH:
        return prompts.render("evolve/breadth.j2", instruction=instruction)
    if method in IN_DEPTH:
        return prompts.render("evolve/depth.j2", method=method, instruction=instruction)
    if method_text is None:
        raise ValueError(f"method {method!r} needs an evolving method text")
    return prompts.render(METHOD_TEMPLATE, method=method_text, instruction=instruction)


EXAMPLE_FILES = {"evol": "evolve/examples.yaml", "auto": "optimize/examples.yaml"}  # under prompts/


def load_examples(prompts: PromptLibrary, method: str) -> list[dict[str, str]]:
    """The worked examples of ``method`` (an Evol-Instruct method, or an Auto Evol-Instruct strategy),
    each {"instruction", "answer"}; one clear error when the file lacks them."""
    auto = method not in IN_DEPTH and method != BREADTH
    path = prompts.root / EXAMPLE_FILES["auto" if auto else "evol"]
    key = "auto" if auto else method
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the few-shot examples (evolve.few_shot): {err}") from None
    examples = found.get(key) if isinstance(found, dict) else None
    answer = "answer" if auto else "rewritten"
    if not isinstance(examples, list) or not examples or not all(
            isinstance(e, dict) and isinstance(e.get("instruction"), str) and isinstance(e.get(answer), str)
            for e in examples):
        raise ValueError(f"{path}: {key}: expected a non-empty list of {{instruction, {answer}}} examples")
    return [{"instruction": e["instruction"], "answer": e[answer]} for e in examples]


def evolving_messages(prompts: PromptLibrary, method: str, instruction: str, method_text: str | None = None,
                      few_shot: bool = False) -> list[dict[str, str]]:
    """The chat of one evolving call: the evolving prompt for ``instruction``; with ``few_shot``, after the
    method's worked examples, each an earlier turn (its prompt, answered by its rewrite)."""
    turns = []
    if few_shot:
        for example in load_examples(prompts, method):
            turns += [{"role": "user", "content": evolving_prompt(prompts, method, example["instruction"], method_text)},
                      {"role": "assistant", "content": example["answer"]}]
    return [*turns, {"role": "user", "content": evolving_prompt(prompts, method, instruction, method_text)}]


def template_hash(prompts: PromptLibrary, method: str, method_text: str | None = None) -> str:
    if method == BREADTH:
        return prompts.hash("evolve/breadth.j2")
    if method in IN_DEPTH:
        return prompts.hash("evolve/depth.j2")
    return make_id(prompts.hash(METHOD_TEMPLATE), method_text)


def method_text(strategy: str, method_file: str | Path) -> str | None:
    """The evolving method a strategy uses: auto (the optimized method) and auto_initial (the initial method)
    read the one the optimize stage wrote to ``method.txt``; evol uses the hand-written methods (None)."""
    return Path(method_file).read_text(encoding="utf-8").strip() if strategy in ("auto", "auto_initial") else None


class Evolution(NamedTuple):
    """One instruction evolved with a method text."""

    instruction: str | None  # parsed after the final-instruction marker; None when it is missing
    raw: str | None  # the evolver's whole answer; None when the call failed
    finish_reason: str | None  # "length": the answer stopped at max_tokens


def evolve_with_method(llm: LLM, prompts: PromptLibrary, instructions: list[str], method_text: str,
                       temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
                       seed: int | None = None, desc: str = "evolve",
                       controls: Mapping[str, Any] | None = None, few_shot: bool = False) -> list[Evolution]:
    """Apply one evolving method to each instruction. A failed call is an Evolution with no instruction and
    no raw text (as unparseable as a missing marker, and nothing to show). ``controls``: ``evolve.controls``."""
    merged = llm.role.controls.merged(controls)
    requests = [llm.request(evolving_messages(prompts, "auto", i, method_text, few_shot),
                             temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, controls=merged)
                for i in instructions]
    return [Evolution(None, None, None) if c.failed else Evolution(elimination.parse_final_instruction(c.text), c.text, c.finish_reason)
            for c in llm.generate(requests, desc=desc)]


def is_instruction_verdicts(llm: LLM, prompts: PromptLibrary, texts: list[str]) -> list[bool | None]:
    """LLM check: True when the judge reads ``text`` as an instruction, False when not, None unparsed (or failed).
    The answer is held to Yes / No (see ``ChatRequest.choices``)."""
    requests = [llm.request([{"role": "user", "content": prompts.render(IS_INSTRUCTION_TEMPLATE, text=t)}],
                            choices=("Yes", "No")) for t in texts]
    return [None if t is None else elimination.parse_is_instruction(t) for t in llm.complete(requests, desc="instruction check")]


def info_gain_verdicts(llm: LLM, prompts: PromptLibrary, parents: list[str], children: list[str]) -> list[bool | None]:
    """LLM check: True when the evolved instruction equals its parent (no information gain); the answer is
    held to the prompt's two verdicts."""
    requests = [llm.request([{"role": "user", "content": prompts.render("judge/equal.j2", first=p, second=c)}],
                            choices=("Equal", "Not Equal")) for p, c in zip(parents, children)]
    # a failed call is an unparsed verdict: the item is not eliminated on no evidence
    return [None if t is None else elimination.parse_equal(t) for t in llm.complete(requests, desc="equal check")]


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
    request the respond stage makes for a surviving instruction and respond finds it in the cache: one
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


def evolve_round(pool: pl.DataFrame, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                 evolver: LLM, method_text: str | None = None, judge: LLM | None = None,
                 responder: LLM | None = None,
                 respond_sampling: Mapping[str, Any] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Evolve every item of ``pool`` once. Returns (round table, next pool, summary).

    ``responder`` and ``respond_sampling`` answer the evolved instructions for the response rules when
    ``evolve.check_role`` comes to ``responder`` (see :func:`check_responder`)."""
    items = pool.to_dicts()
    n = len(items)
    if settings.strategy == "evol":
        methods = assign_methods([it["root_id"] for it in items], round_index, settings.assignment, settings.breadth, settings.seed)
    else:
        if not method_text:
            raise ValueError(f"evolve.strategy {settings.strategy}: no evolving method text given")
        methods = [settings.strategy] * n
    # sample_index = the round: a parent kept after a failure gets a fresh attempt, not its cached one
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
                    seed=settings.seed, sample_index=round_index,
                    controls=evolver.role.controls.merged(settings.controls))

    # 1. evolve
    requests = [evolver.request(evolving_messages(prompts, m, it["instruction"], method_text, settings.few_shot), **sampling)
                for m, it in zip(methods, items)]
    outs = evolver.generate(requests, desc=f"round {round_index}: evolve")
    raws = [None if c.failed else c.text for c in outs]
    finishes = [c.finish_reason for c in outs]
    details: list[str | None] = [c.error for c in outs]
    candidates = [None if r is None else elimination.parse_final_instruction(r) if m in STRATEGIES else r.strip()
                  for m, r in zip(methods, raws)]

    # 2. checks on the instruction itself
    switches = {k: settings.rule(k) for k in INSTRUCTION_RULES}
    repetition = repetition_test(settings.repetition)
    reasons: list[str | None] = []
    for m, it, cand, finish, out in zip(methods, items, candidates, finishes, outs):
        if out.failed:
            reasons.append(out.failure_reason)
            continue
        if m in STRATEGIES and cand is None:
            # a marker that never came because the answer was cut off: the cut is the cause
            cut = switches["truncated"] and finish == "length"
            reasons.append(elimination.TRUNCATED if cut else elimination.MISSING_MARKER)
            continue
        reasons.append(elimination.instruction_failure(it["instruction"], cand, finish_reason=finish,
                                                    repetition=repetition, **switches))

    # 3. checks on an answer to the evolved instruction (generated only when a rule needs it)
    responses: list[str | None] = [None] * n
    response_rules = {k: settings.rule(k) for k in RESPONSE_RULES}
    alive = [i for i in range(n) if reasons[i] is None]
    if any(response_rules.values()) and alive:
        checker, check_sampling = check_responder(settings, evolver, responder, respond_sampling)
        answers = respond(checker, prompts, [candidates[i] for i in alive], [items[i]["input"] for i in alive],
                          desc=f"round {round_index}: check", **check_sampling)
        for i, answer in zip(alive, answers):
            if answer.failed:  # the item cannot be checked: it fails with the call's reason
                reasons[i], details[i] = answer.failure_reason, f"check response: {answer.error}"
                continue
            responses[i] = answer.text
            reasons[i] = elimination.response_failure(answer.text, **response_rules)

    # 4. optional checks with the judge: is it an instruction at all, then does it add anything
    if any(settings.rule(k) for k in JUDGE_RULES) and judge is None:
        raise ValueError("evolve.elimination.not_an_instruction_judge and info_gain need the judge role")
    unparsed_instruction = 0
    alive = [i for i in range(n) if reasons[i] is None]
    if settings.rule("not_an_instruction_judge") and alive:
        verdicts = is_instruction_verdicts(judge, prompts, [candidates[i] for i in alive])
        for i, asks in zip(alive, verdicts):
            unparsed_instruction += asks is None
            if asks is False:
                reasons[i] = elimination.JUDGED_NOT_AN_INSTRUCTION
    unparsed_equal = 0
    alive = [i for i in range(n) if reasons[i] is None]
    if settings.rule("info_gain") and alive:
        verdicts = info_gain_verdicts(judge, prompts, [items[i]["instruction"] for i in alive], [candidates[i] for i in alive])
        for i, same in zip(alive, verdicts):
            unparsed_equal += same is None
            if same:
                reasons[i] = elimination.NO_INFO_GAIN

    statuses = [EVOLVED if reason is None else FAILED for reason in reasons]
    texts = [cand if cand is not None else "" for cand in candidates]
    hashes = {m: template_hash(prompts, m, method_text) for m in set(methods)}
    table = pl.DataFrame({
        "id": [make_id(it["id"], round_index, m, text, status) for it, m, text, status in zip(items, methods, texts, statuses)],
        "root_id": [it["root_id"] for it in items], "parent_id": [it["id"] for it in items], "round": [round_index] * n,
        "method": methods, "status": statuses, "failure_reason": reasons, "failure_detail": details,
        "instruction": texts, "input": [it["input"] for it in items], "output": [""] * n,
        "parent_instruction": [it["instruction"] for it in items], "raw_output": raws, "finish_reason": finishes,
        "check_response": responses, "template_hash": [hashes[m] for m in methods], "model": [evolver.label] * n,
    }, schema=ROUND_SCHEMA)
    # the next pool, in pool order: each evolved item, and (keep_parent) the parent of each failed one
    evolved = pl.Series([status == EVOLVED for status in statuses], dtype=pl.Boolean)
    pool_out = _as_pool(table)
    if settings.on_failure == "keep_parent":
        parents = _as_pool(pool)
        pool_out = pl.DataFrame([pool_out[c].zip_with(evolved, parents[c]) for c in POOL_COLUMNS])
    else:
        pool_out = pool_out.filter(evolved)
    summary = round_summary(table)
    summary["equal_check_unparsed"] = unparsed_equal
    summary["instruction_check_unparsed"] = unparsed_instruction
    summary["next_pool"] = pool_out.height
    return table, pool_out, summary


ROUND_SCHEMA = {
    "id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": pl.Int32, "method": pl.String,
    "status": pl.String, "failure_reason": pl.String, "failure_detail": pl.String, "instruction": pl.String, "input": pl.String,
    "output": pl.String, "parent_instruction": pl.String, "raw_output": pl.String, "finish_reason": pl.String,
    "check_response": pl.String,
    "template_hash": pl.String, "model": pl.String,
}


POOL_COLUMNS = LINEAGE + ["instruction", "input", "output"]  # what an item carries into the next round


def _as_pool(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s pool columns, typed as the round table's (null where ``frame`` lacks one)."""
    return frame.select([(pl.col(c) if c in frame.columns else pl.lit(None)).cast(ROUND_SCHEMA[c]).alias(c)
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
            "evolver_cut_at_max_tokens": int((table["finish_reason"] == "length").sum())}
