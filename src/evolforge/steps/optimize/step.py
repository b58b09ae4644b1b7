"""Auto Evol-Instruct: optimize the evolving method on a development set (docs/reference/algorithms.md section 4.4).

One step t, starting from the current method e_{t-1}:

1. sample a mini-batch from the pool and evolve it ``trajectory_rounds`` times with e_{t-1} -> the
   trajectory ``[{"id": k, "stage0": x, "stage1": e(x), ...}]`` (JSON, as the reference code builds it);
2. ``candidates`` (m) independent optimizer conversations: user = analysis prompt -> feedback, then, in
   the same conversation, user = optimization prompt with e_{t-1} -> an answer holding
   ```` ```Optimized Method ... ``` ````; sample ``j`` uses ``sample_index=j``, so the m samples differ
   and each is still cached on its own;
3. every candidate that parses evolves the whole development set; the evolver (temperature 0) answers
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

The development set is fixed across steps and disjoint from the mini-batch pool, so the current
method's rate is measured once and carried (re-scoring it would repeat the same cached calls). Step 1's
mini-batch is drawn before that measure, and its trajectory's first round is evolved in the same call as the
development set: the same requests in fuller batches (a backend whose numerics depend on the batch, llama.cpp
among them, may then answer a request differently, as in any other batch).
Optimization stops after ``steps`` steps, or once the best lambda has not strictly decreased for
``patience`` consecutive steps (``patience`` 0 or null: never early).

Whether the evolver can follow the result, and what evolving then does: :mod:`evolforge.steps.optimize.result`.

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
import random
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from evolforge.config.bounds import Refusal
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.io.records import (SEED_POOL, SETTINGS, TABLE, VERSIONS, atomic_dir, output_versions, read_table,
                                  write_json, write_jsonl)
from evolforge.llm.cached import LLM
from evolforge.steps.common import copying, elimination
from evolforge.steps.common.difficulty import SCORE_TEMPLATES
from evolforge.steps.common.evolving import (INITIAL_TEMPLATES, METHOD_TEMPLATE, Evolution, evolve_with_method,
                                             initial_method_text)
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.responses import RESPONSE_TEMPLATE
from evolforge.steps.evolve.settings import EvolveSection, MissingMarker
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.optimize.candidates import (ANALYSIS_TEMPLATE, OPTIMIZATION_TEMPLATES, answer_budget,
                                                 propose_methods, with_reply_format)
from evolforge.steps.optimize.result import (Candidate, MethodScore, OptimizeResult, indistinct_dev_note, outcome,
                                             summary, unparseable_warning, usability)
from evolforge.steps.optimize.scoring import FailureRules, dev_difficulty, score_method, score_methods
from evolforge.steps.optimize.settings import OptimizeSettings

SELECTIONS = ("lowest_failure", "no_regression")


def split_dev_pool(items: list[dict], *, dev_size: int, batch_size: int, rng: random.Random,
                   held_out: frozenset[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """A seeded development set of ``dev_size`` items and the rest as the mini-batch pool (disjoint).

    The development set is drawn first from the items whose id is not in ``held_out`` (the seeds the rounds
    evolve, the paper's training data), so a method is measured on instructions it will not be applied to; only a
    pool too small for that lends it some of them."""
    if len(items) < dev_size + batch_size:
        raise ValueError(
            f"optimize: the seed pool has {len(items)} items, too few for a development set of {dev_size} "
            f"(params.yaml optimize.dev_size) plus a mini-batch of {batch_size} (optimize.batch_size) "
            f"from the remaining items; lower them or use a larger seed source")
    order = list(range(len(items)))
    rng.shuffle(order)
    order.sort(key=lambda i: items[i]["id"] in held_out)  # stable: the shuffle's order within each part
    return [items[i] for i in order[:dev_size]], [items[i] for i in order[dev_size:]]


def build_trajectory(evolver: LLM, prompts: PromptLibrary, instructions: list[str], method: str,
                     *, rounds: int, temperature: float, controls: Mapping[str, Any] | None = None,
                     max_tokens: int | None = None, few_shot: bool = False,
                     missing_marker: MissingMarker = "fail", verdicts: FailureRules | None = None,
                     first: list[Evolution] | None = None) -> tuple[list[dict], list[dict]]:
    """Evolve each instruction ``rounds`` times -> (trajectory cases, [{"id", "round"} of stages without the
    final-instruction marker]). Such a stage shows the whole answer, whatever ``missing_marker`` says. With
    ``verdicts`` (``optimize.trajectory_verdicts``) stage r also carries ``stage{r}_verdict``, those rules' verdict
    on its text (:meth:`FailureRules.verdict`). ``first``: round 1's evolutions, made already in a larger call."""
    cases = [{"id": k, "stage0": text} for k, text in enumerate(instructions)]
    unparsed = []
    current = list(instructions)
    phrases = copying.method_phrases(method) if verdicts is not None else frozenset()
    for r in range(1, rounds + 1):
        results = first if r == 1 and first is not None else evolve_with_method(
            evolver, prompts, current, method, temperature=temperature, desc=f"trajectory round {r}",
            controls=controls, max_tokens=max_tokens, few_shot=few_shot, missing_marker=missing_marker)
        for case, evolution in zip(cases, results):
            parsed, raw, _ = evolution
            if raw is None or elimination.parse_final_instruction(raw) is None:
                unparsed.append({"id": case["id"], "round": r})
            case[f"stage{r}"] = (parsed if parsed is not None else raw.strip() if raw is not None
                                 else case[f"stage{r - 1}"])
            if verdicts is not None:
                case[f"stage{r}_verdict"] = verdicts.verdict(case[f"stage{r - 1}"], evolution, phrases)
        current = [case[f"stage{r}"] for case in cases]
    return cases, unparsed


def select_candidate(candidates: list[Candidate], current: MethodScore, selection: str) -> int | None:
    """Index of the candidate that becomes the current method, or None to keep it (rules: module doc)."""
    scored = [c for c in candidates if c.dev is not None]
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


def _step_candidates(step: int, batch: list[dict], current_method: str, current: MethodScore, dev: list[dict], *,
                     evolver: LLM, optimizer: LLM, prompts: PromptLibrary, settings: OptimizeSettings,
                     rules: FailureRules, evolving: dict,
                     first: list[Evolution] | None = None) -> tuple[list[dict], list[dict], list[Candidate]]:
    """One step's candidates: the mini-batch's trajectory under the current method (``first``: its first round,
    made already), the optimizer's proposals, and each new method scored on the development set -> (trajectory, its
    unparsed stages, the candidates)."""
    trajectory, unparsed = build_trajectory(evolver, prompts, [b["instruction"] for b in batch], current_method,
                                            rounds=int(settings.trajectory_rounds),
                                            temperature=settings.evolver_temperature,
                                            verdicts=rules if settings.trajectory_verdicts else None, first=first,
                                            **evolving)
    proposals = propose_methods(optimizer, prompts, trajectory, current_method, candidates=int(settings.candidates),
                                controls=settings.controls, verdicts=settings.trajectory_verdicts,
                                max_tokens=answer_budget(optimizer, current_method, settings.answer_budget),
                                prompt=settings.optimization_prompt)
    for c in proposals:
        if c.method is not None and settings.keep_reply_format:
            kept = with_reply_format(c.method, current_method)
            c.method, c.reply_format_kept = kept, kept != c.method
        # a method written back unchanged is the current one: its score is known
        if c.method is not None and c.method.strip() == current_method.strip():
            c.dev, c.unchanged = current, True
    scored = [c for c in proposals if c.method is not None and not c.unchanged]
    for c, score in zip(scored, score_methods(evolver, prompts, dev, [c.method for c in scored],
                                              temperature=settings.evolver_temperature,
                                              desc=f"step {step} candidates", rules=rules, **evolving)):
        c.dev = score
    return trajectory, unparsed, proposals


def _score_initial(dev: list[dict], first_batch: list[dict], method: str, *, evolver: LLM, prompts: PromptLibrary,
                   settings: OptimizeSettings, rules: FailureRules,
                   evolving: dict) -> tuple[MethodScore, list[Evolution]]:
    """The initial method's score on the development set, and step 1's trajectory's first round (``first_batch``
    evolved with it): one call to the evolver for both, the mini-batch's few requests filling the batches the
    development set leaves half empty."""
    evolved = evolve_with_method(evolver, prompts, [d["instruction"] for d in dev + first_batch], method,
                                 temperature=settings.evolver_temperature, desc="step 0: evolve", **evolving)
    score = score_method(evolver, prompts, dev, method, temperature=settings.evolver_temperature, desc="step 0",
                         rules=rules, evolved=evolved[:len(dev)], **evolving)
    return score, evolved[len(dev):]


def optimize_method(pool: list[dict], dev: list[dict], *, initial_method: str, evolver: LLM,
                    optimizer: LLM, prompts: PromptLibrary, settings: OptimizeSettings, rng: random.Random,
                    evolve_controls: Mapping[str, Any] | None = None, evolve_max_tokens: int | None = None,
                    few_shot: bool = False, missing_marker: MissingMarker = "fail",
                    rules: FailureRules = FailureRules()) -> OptimizeResult:
    """Run the optimization loop. ``pool`` and ``dev`` hold {"id", "instruction", "input"} items.
    ``evolve_controls``, ``evolve_max_tokens``: the step-format calls' (``EvolveSettings.step_format``), for
    the evolving calls (the method is scored as the rounds use it); ``missing_marker``: ``evolve.missing_marker``."""
    current_method = initial_method
    evolving = dict(controls=evolve_controls, max_tokens=evolve_max_tokens, few_shot=few_shot,
                    missing_marker=missing_marker)
    first_batch = rng.sample(pool, int(settings.batch_size)) if settings.steps else []
    current, first_round = _score_initial(dev, first_batch, initial_method, evolver=evolver, prompts=prompts,
                                          settings=settings, rules=rules, evolving=evolving)
    result = OptimizeResult(method=initial_method, initial=current, best=current, initial_method=initial_method,
                            dev_size=len(dev))
    if current.failures == 0 and settings.selection == "lowest_failure":
        result.notes.append(indistinct_dev_note(len(dev)))
        print(f"optimize: {result.notes[-1]}", flush=True)
    stale = stale_unparsed = 0  # steps since the best rate last decreased; of those, steps with no candidate parsed
    for step in range(1, int(settings.steps) + 1):
        batch = first_batch if step == 1 else rng.sample(pool, int(settings.batch_size))
        trajectory, unparsed, proposals = _step_candidates(
            step, batch, current_method, current, dev, evolver=evolver, optimizer=optimizer, prompts=prompts,
            settings=settings, rules=rules, evolving=evolving, first=first_round if step == 1 else None)
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
            "step": step,
            "method_before": method_before,
            "minibatch_ids": [b["id"] for b in batch],
            "trajectory": trajectory,
            "trajectory_unparsed": unparsed,
            "candidates": [dataclasses.asdict(c) for c in proposals],
            "parse_errors": sum(c.parse_error is not None for c in proposals),
            "parseable_candidates": parsed,
            "no_parseable_candidate": parsed == 0,
            "chosen": chosen,
            "current_failure_rate": current.failure_rate,
            "best_failure_rate": result.best.failure_rate,
            "improved": improved,
        })
        if settings.patience and stale >= settings.patience:
            # patience means "candidates were tried and none did better"; steps without one are another story
            result.stop_reason = "no_parseable_candidate" if stale_unparsed == stale else "patience"
            result.stopped_early = True
            break
    if result.log and not any(r["parseable_candidates"] for r in result.log):
        result.stop_reason = "no_parseable_candidate"  # the steps ran, but the optimizer never wrote a method
    result.outcome = outcome(result)
    return result


def read_seed_pool(seed: str | Path) -> pl.DataFrame:
    """The seed stage's whole pool (every seed before ``seed.limit``'s sample), beside its table."""
    path = Path(seed) / SEED_POOL
    if not path.is_file():
        raise ValueError(f"{path}: missing; the seed stage writes it beside {TABLE} (rerun it: dvc repro seed)")
    return pl.read_parquet(path)


def read_dev_pool(seed: str | Path, settings: OptimizeSettings, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """The development set and the mini-batch pool, from the seed stage's whole pool (:func:`split_dev_pool`)."""
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r.get("input") or ""}
             for r in read_seed_pool(seed).select("id", "instruction", "input").to_dicts()]
    evolved = frozenset(read_table(seed)["id"].to_list())  # the seeds the rounds evolve
    return split_dev_pool(items, dev_size=settings.dev_size, batch_size=settings.batch_size, rng=rng,
                          held_out=evolved)


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
    rng = random.Random(settings.seed)  # one local RNG: the dev split, then each step's mini-batch
    dev, pool = read_dev_pool(seed, settings, rng)
    models = open_models(llms, judge=settings.judge_difficulty)
    judge = models.pop("judge", None)
    evolve_controls, evolve_max_tokens = evolve_settings.step_format()
    result = optimize_method(pool, dev, initial_method=initial, prompts=prompts, settings=settings, rng=rng,
                             evolve_controls=evolve_controls, evolve_max_tokens=evolve_max_tokens,
                             few_shot=evolve_settings.few_shot, missing_marker=evolve_settings.missing_marker,
                             rules=FailureRules.of(settings.failure, evolve_settings, prompts), **models)
    print(f"optimize: {result.outcome}", flush=True)
    difficulty = None
    if judge is not None:
        difficulty = dev_difficulty(result, dev, judge, prompts, judge_settings,
                                    models["evolver"], settings.evolver_temperature, controls=evolve_controls,
                                    max_tokens=evolve_max_tokens, few_shot=evolve_settings.few_shot,
                                    missing_marker=evolve_settings.missing_marker)
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
