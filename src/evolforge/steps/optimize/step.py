"""Auto Evol-Instruct: optimize the evolving method on a development set (docs/reference/algorithms.md section 4.4).

One step t, starting from the current method e_{t-1}:

1. sample a mini-batch from the pool and evolve it ``trajectory_rounds`` times with e_{t-1} -> the
   trajectory ``[{"id": k, "stage0": x, "stage1": e(x), ...}]`` (JSON, as the reference code builds it);
2. ``candidates`` (m) independent optimizer conversations: user = analysis prompt -> feedback, then, in
   the same conversation, user = optimization prompt with e_{t-1} -> an answer holding
   ```` ```Optimized Method ... ``` ````; sample ``j`` uses ``sample_index=j``, so the m samples differ
   and each is still cached on its own;
3. every candidate that parses evolves the whole development set (under ``optimize.racing``, until it can no
   longer win: :mod:`evolforge.steps.optimize.racing`); the evolver (temperature 0) answers
   each evolved instruction and the failure function F counts failures: the evol failure rate
   lambda = failures / dev size. A missing ``#Finally Rewritten Instruction#`` is a failure without a response
   (``evolve.missing_marker: fail``; ``whole_output`` takes the whole answer as the rewrite).
   ``optimize.failure: elimination`` counts the rounds' own elimination rules instead (:class:`FailureRules`):
   an unchanged or chatty rewrite fails too, as it fails in a round;
4. a selection rule picks e_t (or keeps e_{t-1}).

Selection rules (``optimize.selection``):

- ``lowest_failure`` (paper): e_t is the candidate with the lowest lambda (ties: the lower sample
  index), even when it is worse than e_{t-1}: the paper always moves to the step's best candidate. The
  *result* is the method with the lowest lambda seen (the initial one included; a later method must be
  strictly lower to replace it).
- ``no_regression`` (reference code): success = 1 - lambda; score = success x (mean characters of the
  responses / mean characters of the evolved instructions), both over the items that parsed. Candidates
  are tried by score, highest first (ties: lower index); the first with success >= and score >= those
  of e_{t-1} becomes e_t, otherwise e_{t-1} is kept. The result is e_t after the last step (it never
  has a higher lambda than an earlier e_t).

Methods from a file (``optimize.candidates_file``: :mod:`evolforge.steps.optimize.method_file`) are measured
after the initial method, on the same development set by the same rules, before the first step: the best of them
by the selection rule (under ``lowest_failure`` one strictly below the initial method) is where the steps start
from, and the result the steps must beat.

The development set is fixed across steps and disjoint from the mini-batch pool, so the current
method's rate is measured once and carried (re-scoring it would repeat the same cached calls). Step 1's
mini-batch is drawn before that measure, and its trajectory's first round is evolved in the same call as the
development set: the same requests in fuller batches (a backend whose numerics depend on the batch, llama.cpp
among them, may then answer a request differently, as in any other batch). With one trajectory round, the
optimizer's analyses of it (step 2) are decoded beside the development set's answers (:func:`_score_initial`).
Optimization stops after ``steps`` steps, or once the best lambda has not strictly decreased for
``patience`` consecutive steps (``patience`` 0 or null: never early).

Whether the evolver can follow the result, and what evolving then does: :mod:`evolforge.steps.optimize.result`.

A step none of whose candidates is an evolving method (none parsed, or each is a plan about its trajectory's
instructions, or one whose evolutions all lack the final marker: :func:`~evolforge.steps.optimize.trajectory.
not_a_method`) makes the stage say once that the optimizer model is the limit
(:func:`~evolforge.steps.optimize.result.optimizer_limit`).

Trajectory stages whose answer lacks the final-instruction marker keep the raw answer (stripped), as
the reference code does: the optimizer then sees the broken output it is meant to analyse, and the
next round evolves that text. Such stages are listed in the step's log (``trajectory_unparsed``).

A failed LLM call (prompt too long, rejected, retries exhausted) counts like an unparseable answer: a
missing marker on the development set, a failed response there, a candidate with a ``parse_error``
naming the failure; a failed trajectory stage keeps the previous stage's text (there is no answer).

The optimizer's conversations and the parsing of its answers: :mod:`evolforge.steps.optimize.candidates`; how
a method is measured on the development set: :mod:`evolforge.steps.optimize.scoring`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path

from evolforge.config.bounds import Refusal
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.io.records import SETTINGS, VERSIONS, atomic_dir, output_versions, write_json, write_jsonl
from evolforge.llm.cached import LLM
from evolforge.llm.together import Alongside
from evolforge.llm.types import Completion
from evolforge.steps.common.difficulty import SCORE_TEMPLATES
from evolforge.steps.common.evolving import (INITIAL_TEMPLATES, METHOD_TEMPLATE, Evolution, EvolvingCall,
                                             evolve_with_method, initial_method_text)
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.responses import RESPONSE_TEMPLATE
from evolforge.steps.evolve.settings import EvolveSection, EvolveSettings
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.optimize.candidates import (ANALYSIS_TEMPLATE, OPTIMIZATION_TEMPLATES, analysis_requests,
                                                 analysis_turn, answer_budget, propose_methods, with_reply_format)
from evolforge.steps.optimize.dev import read_dev_pool
from evolforge.steps.optimize.method_file import FileMethod, candidate_methods
from evolforge.steps.optimize.racing import Development
from evolforge.steps.optimize.result import (Candidate, MethodScore, OptimizeResult, indistinct_dev_note,
                                             optimizer_limit, outcome, summary, unparseable_warning, usability)
from evolforge.steps.optimize.scoring import FailureRules, dev_difficulty, method_score, score_method
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.trajectory import COPIES_TRAJECTORY, not_a_method

SELECTIONS = ("lowest_failure", "no_regression")


def evolving_call(settings: OptimizeSettings, evolve: EvolveSettings) -> EvolvingCall:
    """The development runs' evolving call: the rounds' step-format call (``evolve.method_*``, few-shot,
    ``evolve.missing_marker``) at ``optimize.evolver_temperature``, with the role's top_p and seed."""
    return EvolvingCall.from_evolve(evolve, step_format=True, temperature=settings.evolver_temperature)


def select_candidate(candidates: list[Candidate], current: MethodScore, selection: str) -> int | None:
    """Index of the candidate that becomes the current method, or None to keep it (rules: module doc); a candidate
    racing stopped is out of the running."""
    scored = [c for c in candidates if c.dev is not None and c.dev.cut is None]
    if not scored:
        return None
    if selection == "lowest_failure":
        return min(scored, key=lambda c: (c.dev.failure_rate, c.index)).index
    if selection == "no_regression":
        for c in sorted(scored, key=lambda c: (-c.dev.score, c.index)):
            if c.dev.success >= current.success and c.dev.score >= current.score:
                return c.index
        return None
    raise ValueError(f"params.yaml optimize.selection: {selection!r} is not one of {SELECTIONS}")


def count_parsed(result: OptimizeResult, step: int, proposals: list[Candidate], settings: OptimizeSettings) -> int:
    """How many of a step's candidates parsed. None: warned in the stage log and kept in the result's warnings (the
    metrics, the report); the stage stops there under ``optimize.on_unparseable: stop``."""
    parsed = sum(c.method is not None for c in proposals)
    if parsed:
        return parsed
    warning = unparseable_warning(step, proposals)
    result.warnings.append(warning)
    print(f"optimize: warning: {warning}", flush=True)  # the stage log, as it happens
    if settings.on_unparseable == "stop":
        raise Refusal(f"stopped (params.yaml optimize.on_unparseable: stop): {warning}; "
                      f"every answer is in the call cache, so a rerun asks only what changed")
    return 0


@dataclasses.dataclass
class FirstStep:
    """What step 1 finds made already by the initial method's scoring (:func:`_score_initial`): its trajectory's
    first round and, when that round is the whole trajectory, the trajectory and the optimizer's analyses of it."""

    first_round: list[Evolution]
    trajectory: tuple[list[dict], list[dict]] | None = None  # (trajectory, its unparsed stages)
    feedbacks: list[Completion] | None = None


def _step_candidates(step: int, batch: list[dict], current_method: str, current: MethodScore, best: MethodScore, *,
                     development: Development, optimizer: LLM, last: bool,
                     made: FirstStep | None = None) -> tuple[list[dict], list[dict], list[Candidate]]:
    """One step's candidates: the mini-batch's trajectory under the current method (``made``: what the initial
    method's scoring made of it already), the optimizer's proposals, and each new method scored on the development
    set -> (trajectory, its unparsed stages, the candidates)."""
    settings, prompts = development.settings, development.prompts
    trajectory, unparsed = (made.trajectory if made is not None and made.trajectory is not None else
                            development.trajectory(batch, current_method, made.first_round if made else None))
    proposals = propose_methods(optimizer, prompts, trajectory, current_method, candidates=int(settings.candidates),
                                controls=settings.controls, verdicts=settings.trajectory_verdicts,
                                max_tokens=answer_budget(optimizer, current_method, settings.answer_budget),
                                prompt=settings.optimization_prompt, feedbacks=made.feedbacks if made else None,
                                copy_stop=settings.racing and settings.copy_cut and not settings.keep_reply_format)
    for c in proposals:
        if c.method is not None and settings.keep_reply_format:
            kept = with_reply_format(c.method, current_method)
            c.method, c.reply_format_kept = kept, kept != c.method
        # a method written back unchanged is the current one: its score is known
        if c.method is not None and c.method.strip() == current_method.strip():
            c.dev, c.unchanged = current, True
        elif settings.racing and settings.copy_cut and \
                not_a_method(c, trajectory, current_method, len(development.dev)) == COPIES_TRAJECTORY:
            c.dev = method_score([], cut=COPIES_TRAJECTORY)  # a plan about its cases, not a method: not measured
    development.measure(proposals, best, current, last=last, desc=f"step {step} candidates")
    for c in proposals:
        c.not_a_method = None if c.unchanged else not_a_method(c, trajectory, current_method, len(development.dev))
    return trajectory, unparsed, proposals


def _score_initial(first_batch: list[dict], method: str, development: Development, optimizer: LLM,
                   analyse: bool) -> tuple[MethodScore, FirstStep]:
    """The initial method's score on the development set, and what step 1 needs of it: its trajectory's first round
    (``first_batch`` evolved with it), made in one call to the evolver with the development set's evolutions, the
    mini-batch's few requests filling the batches the development set leaves half empty. With ``analyse`` (step 1
    starts from this method) and a trajectory of one round, that round is the whole trajectory: the optimizer's
    analyses of it are decoded in the same batches as the evolver's answers to the development set
    (:func:`~evolforge.llm.together.generate_together`), each filling the slots the other's last sequences leave."""
    dev, evolver, prompts, call = development.dev, development.evolver, development.prompts, development.call
    evolved = evolve_with_method(evolver, prompts, [d["instruction"] for d in dev + first_batch], method, call,
                                 desc="step 0: evolve")
    made = FirstStep(evolved[len(dev):])
    alongside = None
    if analyse and first_batch and int(development.settings.trajectory_rounds) == 1:
        made.trajectory = development.trajectory(first_batch, method, made.first_round)
        analysis = analysis_turn(prompts, made.trajectory[0], development.settings.trajectory_verdicts)
        alongside = Alongside(optimizer, analysis_requests(optimizer, analysis, int(development.settings.candidates)))
    score = score_method(evolver, prompts, dev, method, call=call, desc="step 0", rules=development.rules,
                         evolved=evolved[:len(dev)], alongside=alongside)
    made.feedbacks = alongside.completions if alongside is not None else None
    return score, made


def _file_step(result: OptimizeResult, methods: list[FileMethod], development: Development) -> int | None:
    """Measure ``optimize.candidates_file``'s methods against the initial one; the index of the one the steps start
    from (None: the initial method), by the selection rule (under ``lowest_failure``: strictly fewer failures)."""
    initial = result.initial
    candidates = [Candidate(index=j, feedback=None, answer=None, method=m.method, parse_error=None, name=m.name,
                            source=m.source) for j, m in enumerate(methods)]
    for c in candidates:
        if c.method == result.initial_method.strip():
            c.dev, c.unchanged = initial, True
    development.measure(candidates, initial, initial, last=True, desc="candidates file")
    chosen = select_candidate(candidates, initial, development.settings.selection)
    if chosen is not None and candidates[chosen].dev.failure_rate >= initial.failure_rate and \
            development.settings.selection == "lowest_failure":
        chosen = None  # the paper's move to a worse candidate is a step's; the file's best must beat the initial
    result.file_candidates, result.file_chosen = [dataclasses.asdict(c) for c in candidates], chosen
    if chosen is not None and not candidates[chosen].unchanged:
        result.method, result.best = candidates[chosen].method, candidates[chosen].dev
    return chosen


def optimize_method(pool: list[dict], dev: list[dict], *, initial_method: str, evolver: LLM, optimizer: LLM,
                    prompts: PromptLibrary, settings: OptimizeSettings, rng: random.Random, call: EvolvingCall,
                    rules: FailureRules = FailureRules(),
                    file_methods: list[FileMethod] | None = None) -> OptimizeResult:
    """Run the optimization loop. ``pool`` and ``dev`` hold {"id", "instruction", "input"} items; ``call``: the
    evolving call (:func:`evolving_call`: the method is scored as the rounds use it); ``file_methods``: those of
    ``optimize.candidates_file``, measured first."""
    development = Development(dev, evolver, prompts, call, rules, settings)
    first_batch = rng.sample(pool, int(settings.batch_size)) if settings.steps else []
    # a candidates file may move step 1 to another method: then its trajectory is evolved in step 1
    current, made = _score_initial(first_batch, initial_method, development, optimizer, analyse=not file_methods)
    result = OptimizeResult(method=initial_method, initial=current, best=current, initial_method=initial_method,
                            dev_size=len(dev))
    if current.failures == 0 and settings.selection == "lowest_failure":
        result.notes.append(indistinct_dev_note(len(dev)))
        print(f"optimize: {result.notes[-1]}", flush=True)
    if file_methods:
        _file_step(result, file_methods, development)
    current_method, current = result.method, result.best
    stale = stale_unparsed = 0  # steps since the best rate last decreased; of those, steps with no candidate parsed
    for step in range(1, int(settings.steps) + 1):
        batch = first_batch if step == 1 else rng.sample(pool, int(settings.batch_size))
        last = step == settings.steps or bool(settings.patience and stale + 1 >= settings.patience)
        trajectory, unparsed, proposals = _step_candidates(
            step, batch, current_method, current, result.best, development=development, optimizer=optimizer,
            last=last, made=made if step == 1 and current_method == initial_method else None)
        parsed = count_parsed(result, step, proposals, settings)
        chosen = select_candidate(proposals, current, settings.selection)
        method_before = current_method
        if chosen is not None:
            current_method, current = proposals[chosen].method, proposals[chosen].dev
        previous_best = result.best.failure_rate
        if settings.selection == "no_regression" or current.failure_rate < result.best.failure_rate:
            result.method, result.best = current_method, current
        improved = result.best.failure_rate < previous_best
        stale = 0 if improved else stale + 1
        stale_unparsed = 0 if improved else stale_unparsed + (parsed == 0)
        result.log.append({
            "step": step, "method_before": method_before, "minibatch_ids": [b["id"] for b in batch],
            "trajectory": trajectory, "trajectory_unparsed": unparsed,
            "candidates": [dataclasses.asdict(c) for c in proposals],
            "parse_errors": sum(c.parse_error is not None for c in proposals), "parseable_candidates": parsed,
            "no_parseable_candidate": parsed == 0, "chosen": chosen, "current_failure_rate": current.failure_rate,
            "best_failure_rate": result.best.failure_rate, "improved": improved,
        })
        if settings.patience and stale >= settings.patience:
            # patience means "candidates were tried and none did better"; steps without one are another story
            result.stop_reason = "no_parseable_candidate" if stale_unparsed == stale else "patience"
            result.stopped_early = True
            break
    if result.log and not any(r["parseable_candidates"] for r in result.log):
        result.stop_reason = "no_parseable_candidate"  # the steps ran, but the optimizer never wrote a method
    result.outcome, result.optimizer_limit = outcome(result), optimizer_limit(result.log)
    return result


def open_models(llms: RoleLLMs, judge: bool = False) -> dict[str, LLM]:
    """Evolver and optimizer LLMs, and the judge with ``judge`` (one loaded model where the roles name the same)."""
    return {name: llms[name] for name in ("evolver", "optimizer", "judge") if name != "judge" or judge}


def write_method(out: str | Path, method: str, log: list[dict], meta: dict) -> None:
    """The optimize stage's folder: method.txt (the exact text: no added newline), log.jsonl, meta.json."""
    with atomic_dir(out) as tmp:
        (tmp / "method.txt").write_text(method, encoding="utf-8")
        write_jsonl(tmp / "log.jsonl", log)
        write_json(tmp / "meta.json", {VERSIONS: output_versions(), **meta})  # as write_output records them


def run(seed: str | Path, out: str | Path, settings: OptimizeSettings, evolve_settings: EvolveSection,
        judge_settings: JudgeSettings | None, llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The optimize stage: the method optimized on the seed items of ``seed`` by ``llms`` (evolver, optimizer;
    the judge, with ``judge_settings``, under ``judge_difficulty``), written to ``out``. With ``evolve.strategy``
    other than auto it costs nothing: the initial method, an empty log, no model loaded."""
    strategy = evolve_settings.strategy
    initial = initial_method_text(prompts, settings.initial_method)
    templates = [INITIAL_TEMPLATES[settings.initial_method], METHOD_TEMPLATE, RESPONSE_TEMPLATE, ANALYSIS_TEMPLATE,
                 OPTIMIZATION_TEMPLATES[settings.optimization_prompt]]
    if settings.judge_difficulty:
        templates.append(SCORE_TEMPLATES[judge_settings.score_prompt])
    meta = {"templates": {t: prompts.hash(t) for t in templates}, SETTINGS: dataclasses.asdict(settings),
            "evolve_strategy": strategy}
    if strategy != "auto":
        write_method(out, initial, [], {**meta, "skipped": True, "models": {}})
        return Outputs({"skipped": True, "reason": f"evolve.strategy is {strategy!r}, not 'auto'", "steps_run": 0,
                        "calls": 0, "cache_hits": 0},
                       f"optimize: skipped (evolve.strategy {strategy}); initial method -> {out}/method.txt",
                       plot=[])
    file_methods = candidate_methods(settings, prompts)
    if file_methods:  # the file's exact bytes, beside the templates'
        meta["candidates_file"] = {"path": settings.candidates_file, "sha256": hashlib.sha256(
            Path(settings.candidates_file).read_bytes()).hexdigest(), "methods": [m.name for m in file_methods]}
    rng = random.Random(settings.seed)  # one local RNG: the dev split, then each step's mini-batch
    dev, pool = read_dev_pool(seed, settings, rng)
    models = open_models(llms, judge=settings.judge_difficulty)
    judge = models.pop("judge", None)
    call = evolving_call(settings, evolve_settings)
    result = optimize_method(pool, dev, initial_method=initial, prompts=prompts, settings=settings, rng=rng,
                             call=call, rules=FailureRules.of(settings.failure, evolve_settings, prompts),
                             file_methods=file_methods, **models)
    print(f"optimize: {result.outcome}", flush=True)
    if result.optimizer_limit:
        print(f"optimize: {result.optimizer_limit}", flush=True)
    difficulty = None
    if judge is not None:
        difficulty = dev_difficulty(result, dev, judge, prompts, judge_settings, models["evolver"], call)
    usable = usability(result, settings)
    if usable["message"]:
        print(f"optimize: {usable['message']}")
    if not usable["method_usable"] and settings.on_unusable == "stop":
        raise Refusal(f"stopped (params.yaml optimize.on_unusable: stop): {usable['message']}")
    meta.update(skipped=False, dev_ids=[d["id"] for d in dev], fallback=usable["fallback"],
                fallback_reason=usable["message"] if usable["fallback"] else None,
                models={"evolver": models["evolver"].label, "optimizer": models["optimizer"].label})
    write_method(out, result.method, result.log, meta)
    stats = {"evolver": models["evolver"].stats, "optimizer": models["optimizer"].stats}
    metrics = summary(result, stats | ({"judge": judge.stats} if judge is not None else {}), usable)
    metrics["dev_difficulty"] = difficulty
    return Outputs(metrics, _message(result, metrics, Path(out)), plot=metrics["per_step"])


def _message(result: OptimizeResult, metrics: dict, out: Path) -> str:
    """The stage's one-line summary."""
    difficulty = metrics["dev_difficulty"]
    return (f"optimize: failure rate {result.initial.failure_rate:.3f} -> {result.best.failure_rate:.3f} "
            f"in {result.steps_run} step(s) ({result.stop_reason}; {metrics['parseable_candidates']} of "
            f"{metrics['candidates_proposed']} candidates parsed) -> {out / 'method.txt'}"
            + (f"; difficulty of the dev seeds {_mean(difficulty['seeds'])}, evolved with the initial method "
               f"{_mean(difficulty['initial'])}, with the result {_mean(difficulty['method'])}" if difficulty else ""))


def _mean(group: dict) -> str:
    return "-" if group["mean"] is None else f"{group['mean']:.1f} ({group['items']} items)"
