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
   lambda = failures / dev size. A missing ``#Finally Rewritten Instruction#`` is a failure without a response.
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
method's rate is measured once and carried (re-scoring it would repeat the same cached calls).
Optimization stops after ``steps`` steps, or once the best lambda has not strictly decreased for
``patience`` consecutive steps (``patience`` 0 or null: never early).

Whether the evolver can follow the result, and what evolving then does: :mod:`evolforge.steps.optimize.result`.

Trajectory stages whose answer lacks the final-instruction marker keep the raw answer (stripped), as
the reference code does: the optimizer then sees the broken output it is meant to analyse, and the
next round evolves that text. Such stages are listed in the step's log (``trajectory_unparsed``).

A failed LLM call (prompt too long, rejected, retries exhausted) counts like an unparseable answer: a
missing marker on the development set, a failed response there, a candidate with a ``parse_error``
naming the failure; a failed trajectory stage keeps the previous stage's text (there is no answer).

>>> parse_optimized_method("Sure.\\n```Optimized Method\\nStep 1: list methods.\\n```")
('Step 1: list methods.', None)
>>> parse_optimized_method("I have improved the method.")
(None, 'no ```Optimized Method``` block')
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section
from evolforge.config.runtime import load_llm_params
from evolforge.steps.evolve.settings import INSTRUCTION_RULES, RESPONSE_RULES, EvolveSection, EvolveSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.text import question_text
from evolforge.io.records import (SEED_POOL, TABLE, VERSIONS, atomic_dir, output_versions, read_table, write_json,
                                  write_jsonl)
from evolforge.config.optimize_answer import OPENER, answer_problems
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.core.stage import Outputs
from evolforge.llm.cached import LLM, open_roles
from evolforge.llm.types import Completion
from evolforge.steps.common import elimination
from evolforge.steps.common.evolving import (INITIAL_TEMPLATES, METHOD_TEMPLATE, Evolution, evolve_with_method,
                                             evolve_with_methods, initial_method_text)
from evolforge.steps.optimize.result import (Candidate, MethodScore, OptimizeResult, indistinct_dev_note, outcome,
                                             summary, unparseable_warning, usability)
from evolforge.steps.common.difficulty import SCORE_TEMPLATES, difficulty_scores
from evolforge.steps.common.responses import RESPONSE_TEMPLATE, respond
from evolforge.steps.judge.settings import JudgeSettings

ANALYSIS_TEMPLATE = "optimize/analysis.j2"
OPTIMIZATION_TEMPLATE = "optimize/optimization.j2"
SELECTIONS = ("lowest_failure", "no_regression")

_PLACEHOLDER = "<Optimized Method Here>"  # the optimization prompt's format line, echoed back


def parse_optimized_method(text: str, finish_reason: str | None = None) -> tuple[str | None, str | None]:
    """The first non-empty ```` ```Optimized Method ``` ```` block -> (method, None), or (None, reason).

    A block is the text from its opening fence (any case: ```` ```optimized method````) to the next fence. The
    last block may be open: its answer ended there (a stop string at the closing fence, ``optimize.controls``, or
    the end of the turn) and it runs to the end of the text, unless the answer was cut at ``max_tokens``
    (``finish_reason`` "length"): a method cut mid-way is refused, never completed.

    >>> parse_optimized_method("```Optimized Method\\nStep 1: list methods.", "stop")
    ('Step 1: list methods.', None)
    >>> parse_optimized_method("```Optimized Method\\nStep 1: list", "length")
    (None, 'the ```Optimized Method``` block was cut at max_tokens')
    """
    openers = list(OPENER.finditer(text))
    if not openers:
        return None, "no ```Optimized Method``` block"
    cut = False
    for opener in openers:
        end = text.find("```", opener.end())
        if end < 0 and finish_reason == "length":
            cut = True
            continue
        block = (text[opener.end():] if end < 0 else text[opener.end():end]).strip()
        if block and block != _PLACEHOLDER:
            return block, None
    if cut:
        return None, "the ```Optimized Method``` block was cut at max_tokens"
    return None, "empty ```Optimized Method``` block"


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
                     max_tokens: int | None = None, few_shot: bool = False) -> tuple[list[dict], list[dict]]:
    """Evolve each instruction ``rounds`` times -> (trajectory cases, [{"id", "round"} of unparsed stages])."""
    cases = [{"id": k, "stage0": text} for k, text in enumerate(instructions)]
    unparsed = []
    current = list(instructions)
    for r in range(1, rounds + 1):
        results = evolve_with_method(evolver, prompts, current, method, temperature=temperature,
                                     desc=f"trajectory round {r}", controls=controls, max_tokens=max_tokens,
                                     few_shot=few_shot)
        for case, (parsed, raw, _) in zip(cases, results):
            if parsed is None:
                unparsed.append({"id": case["id"], "round": r})
            case[f"stage{r}"] = (parsed if parsed is not None else raw.strip() if raw is not None
                                 else case[f"stage{r - 1}"])
        current = [case[f"stage{r}"] for case in cases]
    return cases, unparsed


@dataclass(frozen=True)
class FailureRules:
    """What fails a development item's evolution (``optimize.failure``): ``rule_f`` (the papers' F on the evolver's
    answer to the evolved instruction, a missing final-instruction marker failing too) or ``elimination`` (the
    rounds' own rules, as ``evolve.elimination`` and ``evolve.repetition`` set them: the evolved instruction's text
    rules, then its answer's, F among them; the judge's checks are left out, they cost calls)."""

    kind: str = "rule_f"
    instruction: tuple[tuple[str, bool], ...] = ()  # evolve.elimination's switches of the text rules
    response: tuple[tuple[str, bool], ...] = ()  # ... and of the answer's
    repetition: elimination.RepetitionTest = elimination.RepetitionTest()

    @classmethod
    def of(cls, kind: str, evolve: EvolveSettings) -> "FailureRules":
        return cls(kind, tuple((k, evolve.rule(k)) for k in INSTRUCTION_RULES),
                   tuple((k, evolve.rule(k)) for k in RESPONSE_RULES), elimination.repetition_test(evolve.repetition))

    def instruction_failure(self, parent: str, evolution: Evolution) -> str | None:
        """Why the evolution fails before it is answered, or None."""
        if evolution.instruction is None:  # as a round: an answer cut before the marker fails by the cut
            cut = self.kind == "elimination" and dict(self.instruction).get("truncated", True)
            return elimination.TRUNCATED if cut and evolution.finish_reason == "length" else elimination.MISSING_MARKER
        if self.kind != "elimination":
            return None
        return elimination.instruction_failure(parent, evolution.instruction, finish_reason=evolution.finish_reason,
                                               repetition=self.repetition, **dict(self.instruction))

    def response_failure(self, response: Completion) -> str | None:
        """Why the answer to a surviving evolution fails it, or None (a failed call fails it with its reason)."""
        if response.failed:
            return response.failure_reason or "failed"
        if self.kind != "elimination":
            return elimination.AUTO_FAILURE if elimination.auto_evol_failure(response.text) else None
        return elimination.response_failure(response.text, **dict(self.response))


def score_methods(evolver: LLM, prompts: PromptLibrary, dev: list[dict], methods: list[str],
                  *, temperature: float, desc: str = "dev", controls: Mapping[str, Any] | None = None,
                  max_tokens: int | None = None, few_shot: bool = False,
                  rules: FailureRules = FailureRules()) -> list[MethodScore]:
    """Evolve the development set with each of ``methods``, answer each evolution that ``rules`` do not fail
    already, and count the failures (``rules``: :class:`FailureRules`).

    All methods' evolutions go to the evolver as one call, then all their answers as one: a step's candidates
    fill the evolver's batches together (a development set of 10 on one method leaves a batch of 6 half empty
    every other round). ``controls``, ``max_tokens``: the evolving calls' (``EvolveSettings.step_format``, as the
    rounds use them)."""
    if not methods:
        return []
    n = len(dev)
    evolved = evolve_with_methods(evolver, prompts, [d["instruction"] for d in dev], methods,
                                  temperature=temperature, max_tokens=max_tokens, desc=f"{desc}: evolve",
                                  controls=controls, few_shot=few_shot)
    reasons: list[str | None] = [rules.instruction_failure(d["instruction"], e)
                                 for d, e in zip(dev * len(methods), evolved)]
    answered = [k for k, why in enumerate(reasons) if why is None]
    responses = respond(evolver, prompts, [evolved[k].instruction for k in answered],
                        [dev[k % n].get("input") or "" for k in answered],
                        desc=f"{desc}: respond", temperature=0.0) if answered else []
    texts: list[str | None] = [None] * len(evolved)
    for k, response in zip(answered, responses):
        reasons[k] = rules.response_failure(response)
        texts[k] = None if response.failed else response.text
    return [_method_score(evolved[m * n:(m + 1) * n], reasons[m * n:(m + 1) * n], texts[m * n:(m + 1) * n])
            for m in range(len(methods))]


def _method_score(evolved: list[Evolution], reasons: list[str | None], texts: list[str | None]) -> MethodScore:
    """One method's :class:`MethodScore` on the development set: its evolutions, each one's failure (None: it
    evolved) and the answer each got (None: not answered, or the call failed)."""
    n = len(evolved)
    fails = sum(r is not None for r in reasons)
    rate = fails / n
    ratio = 0.0
    pairs = [(e.instruction, t) for e, t in zip(evolved, texts) if t is not None]
    if pairs:  # the reference code's length ratio, over the evolutions that were answered
        mean_instruction = sum(len(q) for q, _ in pairs) / len(pairs)
        ratio = (sum(len(t) for _, t in pairs) / len(pairs)) / mean_instruction if mean_instruction else 0.0
    by_reason: dict[str, int] = {}
    for r in reasons:
        if r is not None:
            by_reason[r] = by_reason.get(r, 0) + 1
    return MethodScore(failure_rate=rate, failures=fails, missing_marker=sum(e.instruction is None for e in evolved),
                       success=1.0 - rate, score=(1.0 - rate) * ratio,
                       cut_at_max_tokens=sum(e.finish_reason == "length" for e in evolved),
                       failures_by_reason=dict(sorted(by_reason.items())))


def score_method(evolver: LLM, prompts: PromptLibrary, dev: list[dict], method: str, **options) -> MethodScore:
    """:func:`score_methods` for one method."""
    return score_methods(evolver, prompts, dev, [method], **options)[0]


CHARS_PER_TOKEN = 3.5  # a conservative estimate for English prose (BPE vocabularies average about 4)


def answer_budget(optimizer: LLM, method: str, factor: float) -> int:
    """The optimization turn's max_tokens: ``factor`` times the current method's estimated tokens, never below
    the role's own ``max_tokens``. A rewrite of a 300-token method must fit, whatever the role's short default
    for its free-text turns (a method cut mid-way is refused, and on some CPUs every sample ran past 320)."""
    return max(int(optimizer.role.max_tokens or 0), math.ceil(factor * len(method) / CHARS_PER_TOKEN))


def propose_methods(optimizer: LLM, prompts: PromptLibrary, trajectory: list[dict], method: str,
                    *, candidates: int, controls: Mapping[str, Any] | None = None,
                    max_tokens: int | None = None) -> list[Candidate]:
    """m independent analysis + optimization conversations; sample j uses ``sample_index=j`` in both turns.
    ``max_tokens``: the optimization turn's (:func:`answer_budget`); None = the role's."""
    analysis = {"role": "user", "content": prompts.render(
        ANALYSIS_TEMPLATE, trajectory=json.dumps(trajectory, ensure_ascii=False))}
    # optimize.controls (over roles.optimizer's) shape the optimization turn, whose answer has a fixed form
    # (the fenced method); the analysis is free text with the role's own controls
    merged = optimizer.role.controls.merged(controls, "optimize.controls")
    feedbacks = optimizer.generate([optimizer.request([analysis], sample_index=j) for j in range(candidates)],
                                   desc="optimizer: analysis")
    optimization = {"role": "user", "content": prompts.render(OPTIMIZATION_TEMPLATE, method=method)}
    asked = [j for j, f in enumerate(feedbacks) if not f.failed]  # no feedback, no second turn
    answers = dict(zip(asked, optimizer.generate(
        [optimizer.request([analysis,
                            {"role": "assistant", "content": feedbacks[j].text}, optimization], sample_index=j,
                           controls=merged, max_tokens=max_tokens)
         for j in asked], desc="optimizer: optimization")))
    out = []
    for j, feedback in enumerate(feedbacks):
        answer = answers.get(j)
        if feedback.failed or answer.failed:
            failed = feedback if feedback.failed else answer
            out.append(Candidate(index=j, feedback=None if feedback.failed else feedback.text, answer=None,
                                 method=None, parse_error=f"call failed: {failed.failure_reason}: {failed.error}"))
            continue
        parsed, error = parse_optimized_method(answer.text, answer.finish_reason)
        out.append(Candidate(index=j, feedback=feedback.text, answer=answer.text, method=parsed, parse_error=error))
    return out


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
        raise SystemExit(f"optimize: stopped (params.yaml optimize.on_unparseable: stop): {warning}; "
                         f"every answer is in the call cache, so a rerun asks only what changed")
    return 0


def optimize_method(pool: list[dict], dev: list[dict], *, initial_method: str, evolver: LLM,
                    optimizer: LLM, prompts: PromptLibrary, settings: OptimizeSettings,
                    rng: random.Random, evolve_controls: Mapping[str, Any] | None = None,
                    evolve_max_tokens: int | None = None, few_shot: bool = False,
                    rules: FailureRules = FailureRules()) -> OptimizeResult:
    """Run the optimization loop. ``pool`` and ``dev`` hold {"id", "instruction", "input"} items.
    ``evolve_controls``, ``evolve_max_tokens``: the step-format calls' (``EvolveSettings.step_format``), for
    the evolving calls (the method is scored as the rounds use it)."""
    temperature = settings.evolver_temperature
    current_method = initial_method
    evolving = dict(controls=evolve_controls, max_tokens=evolve_max_tokens, few_shot=few_shot)
    current = score_method(evolver, prompts, dev, initial_method, temperature=temperature, desc="step 0", rules=rules,
                           **evolving)
    result = OptimizeResult(method=initial_method, initial=current, best=current, initial_method=initial_method,
                            dev_size=len(dev))
    if current.failures == 0 and settings.selection == "lowest_failure":
        result.notes.append(indistinct_dev_note(len(dev)))
        print(f"optimize: {result.notes[-1]}", flush=True)
    stale = 0  # steps since the best rate last decreased
    stale_unparsed = 0  # of those, steps whose candidates all failed to parse
    for step in range(1, int(settings.steps) + 1):
        batch = rng.sample(pool, int(settings.batch_size))
        trajectory, unparsed = build_trajectory(evolver, prompts, [b["instruction"] for b in batch],
                                                current_method, rounds=int(settings.trajectory_rounds),
                                                temperature=temperature, **evolving)
        proposals = propose_methods(optimizer, prompts, trajectory, current_method,
                                    candidates=int(settings.candidates), controls=settings.controls,
                                    max_tokens=answer_budget(optimizer, current_method, settings.answer_budget))
        for c in proposals:  # a method written back unchanged is the current one: its score is known
            if c.method is not None and c.method.strip() == current_method.strip():
                c.dev, c.unchanged = current, True
        scored = [c for c in proposals if c.method is not None and not c.unchanged]
        for c, score in zip(scored, score_methods(evolver, prompts, dev, [c.method for c in scored],
                                                  temperature=temperature, desc=f"step {step} candidates",
                                                  rules=rules, **evolving)):
            c.dev = score
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


def dev_difficulty(result: OptimizeResult, dev: list[dict], judge: LLM, prompts: PromptLibrary,
                   settings: JudgeSettings, evolver: LLM, temperature: float, **evolving) -> dict[str, Any]:
    """The judge's mean difficulty (0-100; the expected score with ``judge.probabilities``) of the development
    seeds and of their evolutions under the initial and the resulting method: the evolutions are the scoring
    runs' own (the same requests, read back from the call cache), those without a final instruction left out."""
    methods = list(dict.fromkeys([result.initial_method, result.method]))
    evolved = evolve_with_methods(evolver, prompts, [d["instruction"] for d in dev], methods, temperature=temperature,
                                  desc="dev difficulty: evolutions", **evolving)
    inputs = [d.get("input") or "" for d in dev]
    texts = {"seeds": [question_text(d["instruction"], x) for d, x in zip(dev, inputs)]}
    for k, name in enumerate(methods):
        part = evolved[k * len(dev):(k + 1) * len(dev)]
        texts["initial" if name == result.initial_method else "method"] = [
            question_text(e.instruction, x) for e, x in zip(part, inputs) if e.instruction is not None]
    queries = [q for group in texts.values() for q in group]
    scores = difficulty_scores(queries, judge, prompts, score_prompt=settings.score_prompt,
                               max_tokens=settings.max_tokens, constrain=settings.constrain,
                               probabilities=settings.probabilities, desc="dev difficulty: judge")
    out: dict[str, Any] = {"measure": "difficulty_expected" if settings.probabilities else "difficulty_score"}
    start = 0
    for name, group in texts.items():
        values = [v for v in scores[start:start + len(group)] if v is not None]
        start += len(group)
        out[name] = {"items": len(values), "mean": sum(values) / len(values) if values else None}
    out.setdefault("method", out["initial"])  # the initial method kept: one set of evolutions
    return out


def _mean(group: dict) -> str:
    return "-" if group["mean"] is None else f"{group['mean']:.1f} ({group['items']} items)"


def open_models(params: dict, judge: bool = False) -> dict[str, LLM]:
    """Evolver and optimizer LLMs, and the judge with ``judge`` (one loaded model where the roles name the same)."""
    if judge:
        return open_roles(load_llm_params(params, ("evolver", "optimizer", "judge")))
    return open_roles(load_llm_params(params, ("evolver", "optimizer")))


def write_method(out: str | Path, method: str, log: list[dict], meta: dict) -> None:
    """The optimize stage's folder: method.txt (the exact text: no added newline), log.jsonl, meta.json."""
    with atomic_dir(out) as tmp:
        (tmp / "method.txt").write_text(method, encoding="utf-8")
        write_jsonl(tmp / "log.jsonl", log)
        write_json(tmp / "meta.json", {VERSIONS: output_versions(), **meta})  # as write_output records them


def run(seed: str | Path, out: str | Path, params: dict[str, Any], prompts: PromptLibrary) -> Outputs:
    """The optimize stage: the method optimized on the seed items of ``seed``, written to ``out``. With
    ``evolve.strategy`` other than auto it costs nothing: the initial method, an empty log, no model loaded."""
    settings = load_section(params, "optimize", OptimizeSettings)
    evolve_settings = load_section(params, "evolve", EvolveSection)
    strategy = evolve_settings.strategy
    initial = initial_method_text(prompts, settings.initial_method)
    templates = [INITIAL_TEMPLATES[settings.initial_method], METHOD_TEMPLATE, RESPONSE_TEMPLATE, ANALYSIS_TEMPLATE,
                 OPTIMIZATION_TEMPLATE]
    if settings.judge_difficulty:
        templates.append(SCORE_TEMPLATES[load_section(params, "judge", JudgeSettings).score_prompt])
    meta = {"templates": {t: prompts.hash(t) for t in templates}, "params": dataclasses.asdict(settings),
            "evolve_strategy": strategy}
    if strategy != "auto":
        write_method(out, initial, [], {**meta, "skipped": True, "models": {}})
        return Outputs({"skipped": True, "reason": f"evolve.strategy is {strategy!r}, not 'auto'", "steps_run": 0,
                        "calls": 0, "cache_hits": 0},
                       f"optimize: skipped (evolve.strategy {strategy}); initial method -> {out}/method.txt",
                       plot=[])
    problems = answer_problems(params)  # what would empty every candidate, before any request
    if problems:
        raise ParamsError(problems)
    items = [{"id": r["id"], "instruction": r["instruction"], "input": r.get("input") or ""}
             for r in read_seed_pool(seed).select("id", "instruction", "input").to_dicts()]
    evolved = frozenset(read_table(seed)["id"].to_list())  # the seeds the rounds evolve
    rng = random.Random(settings.seed)  # one local RNG: the dev split, then each step's mini-batch
    dev, pool = split_dev_pool(items, dev_size=settings.dev_size, batch_size=settings.batch_size, rng=rng,
                               held_out=evolved)
    models = open_models(params, judge=settings.judge_difficulty)
    judge = models.pop("judge", None)
    evolve_controls, evolve_max_tokens = evolve_settings.step_format()
    result = optimize_method(pool, dev, initial_method=initial, prompts=prompts, settings=settings, rng=rng,
                             evolve_controls=evolve_controls, evolve_max_tokens=evolve_max_tokens,
                             few_shot=evolve_settings.few_shot,
                             rules=FailureRules.of(settings.failure, evolve_settings), **models)
    print(f"optimize: {result.outcome}", flush=True)
    difficulty = None
    if judge is not None:
        difficulty = dev_difficulty(result, dev, judge, prompts, load_section(params, "judge", JudgeSettings),
                                    models["evolver"], settings.evolver_temperature, controls=evolve_controls,
                                    max_tokens=evolve_max_tokens, few_shot=evolve_settings.few_shot)
    usable = usability(result, settings)
    if usable["message"]:
        print(f"optimize: {usable['message']}")
    if not usable["method_usable"] and settings.on_unusable == "stop":
        raise SystemExit(f"optimize: stopped (params.yaml optimize.on_unusable: stop): {usable['message']}")
    meta.update(skipped=False, dev_ids=[d["id"] for d in dev], fallback=usable["fallback"],
                fallback_reason=usable["message"] if usable["fallback"] else None,
                models={"evolver": models["evolver"].label, "optimizer": models["optimizer"].label})
    write_method(out, result.method, result.log, meta)
    stats = {"evolver": models["evolver"].stats, "optimizer": models["optimizer"].stats}
    metrics = summary(result, stats | ({"judge": judge.stats} if judge is not None else {}), usable)
    metrics["dev_difficulty"] = difficulty
    return Outputs(metrics,
                   f"optimize: failure rate {result.initial.failure_rate:.3f} -> {result.best.failure_rate:.3f} "
                            f"in {result.steps_run} step(s) ({result.stop_reason}; "
                            f"{metrics['parseable_candidates']} of "
                            f"{metrics['candidates_proposed']} candidates parsed) -> {Path(out) / 'method.txt'}"
                            + (f"; difficulty of the dev seeds {_mean(difficulty['seeds'])}, evolved with the "
                               f"initial method {_mean(difficulty['initial'])}, with the result "
                               f"{_mean(difficulty['method'])}" if difficulty else ""),
                   plot=metrics["per_step"])
