"""Auto Evol-Instruct: optimize the evolving method on a development set (ALGORITHMS.md section 4.4).

One step t, starting from the current method e_{t-1}:

1. sample a mini-batch from the pool and evolve it ``trajectory_rounds`` times with e_{t-1} -> the
   trajectory ``[{"id": k, "stage0": x, "stage1": e(x), ...}]`` (JSON, as the reference code builds it);
2. ``candidates`` (m) independent optimizer conversations: user = analysis prompt -> feedback, then, in
   the same conversation, user = optimization prompt with e_{t-1} -> an answer holding
   ```` ```Optimized Method ... ``` ````; sample ``j`` uses ``sample_index=j``, so the m samples differ
   and each is still cached on its own;
3. every candidate that parses evolves the whole development set; the evolver (temperature 0) answers
   each evolved instruction and the failure function F counts failures: the evol failure rate
   lambda = failures / dev size. A missing ``#Finally Rewritten Instruction#`` is a failure without a response;
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

Telling the truth about a run (``stop_reason``, :func:`usability`):

- a step whose m answers hold no parseable ```` ```Optimized Method``` ```` block says so in its log
  (``no_parseable_candidate``). ``stop_reason`` is ``no_parseable_candidate``, never ``patience`` or
  ``steps``, when no step produced one (nothing was optimized) or when patience ran out over steps that
  produced none;
- a method that fails at least ``unusable_failure_rate`` of the development set is one the evolver
  cannot follow (a small evolver rarely writes the final-instruction marker). The metrics say so for the
  initial and the resulting method, and ``on_unusable`` decides what evolving with ``strategy: auto``
  does with an unusable result: ``evol`` falls back to Evol-Instruct's hand-written methods (recorded
  as ``fallback`` in ``data/method/meta.json``; the evolve stage reads it), ``stop`` stops the stage
  with the message, ``keep`` evolves with the method anyway.

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
import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from evolforge.steps import elimination
from evolforge.steps.evolve import evolve_with_method
from evolforge.llm import LLM
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.respond import respond
from evolforge.core.settings import OptimizeSettings

INITIAL_TEMPLATES = {"initial": "optimize/initial_method.j2", "weak": "optimize/weak_method.j2"}
ANALYSIS_TEMPLATE = "optimize/analysis.j2"
OPTIMIZATION_TEMPLATE = "optimize/optimization.j2"
SELECTIONS = ("lowest_failure", "no_regression")
ON_UNUSABLE = ("evol", "stop", "keep")

_OPTIMIZED = re.compile(r"```Optimized Method([\s\S]*?)```")
_PLACEHOLDER = "<Optimized Method Here>"  # the optimization prompt's format line, echoed back


@dataclass
class MethodScore:
    """How one method does on the development set."""

    failure_rate: float  # lambda = failures / dev size
    failures: int  # missing marker + responses caught by F
    missing_marker: int  # evolved answers without #Finally Rewritten Instruction#
    success: float  # 1 - failure_rate
    score: float  # success x mean response chars / mean evolved-instruction chars (reference code)
    cut_at_max_tokens: int = 0  # evolved answers that stopped at max_tokens (the usual cause of a missing marker)


@dataclass
class Candidate:
    """One optimizer sample: its feedback, its raw answer and, when it parsed, the method and its score."""

    index: int  # = sample_index of both optimizer calls
    feedback: str | None  # None when the analysis call failed
    answer: str | None  # None when the call failed (parse_error says why)
    method: str | None
    parse_error: str | None
    dev: MethodScore | None = None


@dataclass
class OptimizeResult:
    method: str  # the result: the best method (see the selection rules above)
    initial: MethodScore
    best: MethodScore
    initial_method: str = ""
    dev_size: int = 0
    log: list[dict] = field(default_factory=list)  # one row per step run
    stop_reason: str = "steps"  # "steps" | "patience" | "no_parseable_candidate" (see the module doc)
    stopped_early: bool = False  # stopped before ``steps`` steps

    @property
    def steps_run(self) -> int:
        return len(self.log)


def initial_method_text(prompts: PromptLibrary, which: str) -> str:
    """The starting method: the paper's initial method (Fig. 2) or its weak baseline (Fig. 9)."""
    if which not in INITIAL_TEMPLATES:
        raise ValueError(f"params.yaml optimize.initial_method: {which!r} is not one of {sorted(INITIAL_TEMPLATES)}")
    return prompts.render(INITIAL_TEMPLATES[which])


def parse_optimized_method(text: str) -> tuple[str | None, str | None]:
    """The first non-empty fenced ```` ```Optimized Method ``` ```` block -> (method, None), or (None, reason)."""
    blocks = [b.strip() for b in _OPTIMIZED.findall(text)]
    if not blocks:
        return None, "no ```Optimized Method``` block"
    for block in blocks:
        if block and block != _PLACEHOLDER:
            return block, None
    return None, "empty ```Optimized Method``` block"


def split_dev_pool(items: list[dict], *, dev_size: int, batch_size: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """A seeded development set of ``dev_size`` items and the rest as the mini-batch pool (disjoint)."""
    if len(items) < dev_size + batch_size:
        raise ValueError(
            f"optimize: the seed has {len(items)} items, too few for a development set of {dev_size} "
            f"(params.yaml optimize.dev_size) plus a mini-batch of {batch_size} (optimize.batch_size) "
            f"from the remaining items; lower them or use a larger seed")
    order = list(range(len(items)))
    rng.shuffle(order)
    return [items[i] for i in order[:dev_size]], [items[i] for i in order[dev_size:]]


def build_trajectory(evolver: LLM, prompts: PromptLibrary, instructions: list[str], method: str,
                     *, rounds: int, temperature: float,
                     controls: Mapping[str, Any] | None = None, few_shot: bool = False) -> tuple[list[dict], list[dict]]:
    """Evolve each instruction ``rounds`` times -> (trajectory cases, [{"id", "round"} of unparsed stages])."""
    cases = [{"id": k, "stage0": text} for k, text in enumerate(instructions)]
    unparsed = []
    current = list(instructions)
    for r in range(1, rounds + 1):
        results = evolve_with_method(evolver, prompts, current, method, temperature=temperature,
                                     desc=f"trajectory round {r}", controls=controls, few_shot=few_shot)
        for case, (parsed, raw, _) in zip(cases, results):
            if parsed is None:
                unparsed.append({"id": case["id"], "round": r})
            case[f"stage{r}"] = parsed if parsed is not None else raw.strip() if raw is not None else case[f"stage{r - 1}"]
        current = [case[f"stage{r}"] for case in cases]
    return cases, unparsed


def score_method(evolver: LLM, prompts: PromptLibrary, dev: list[dict], method: str,
                 *, temperature: float, desc: str = "dev", controls: Mapping[str, Any] | None = None,
                 few_shot: bool = False) -> MethodScore:
    """Evolve the development set with ``method``, answer each evolved instruction, count F failures.
    ``controls``: the evolving calls' generation controls (``evolve.controls``, as the rounds will use them)."""
    evolved = evolve_with_method(evolver, prompts, [d["instruction"] for d in dev], method,
                                 temperature=temperature, desc=f"{desc}: evolve", controls=controls, few_shot=few_shot)
    answered = [(d, e.instruction) for d, e in zip(dev, evolved) if e.instruction is not None]
    responses = respond(evolver, prompts, [q for _, q in answered], [d.get("input") or "" for d, _ in answered],
                        desc=f"{desc}: respond", temperature=0.0) if answered else []
    missing = len(dev) - len(answered)
    # a failed response call is a failure, like a response that F catches
    fails = missing + sum(r.failed or elimination.auto_evol_failure(r.text) for r in responses)
    rate = fails / len(dev)
    ratio = 0.0
    texts = [r.text for r in responses if not r.failed]
    if answered and texts:
        mean_instruction = sum(len(q) for _, q in answered) / len(answered)
        mean_response = sum(len(t) for t in texts) / len(texts)
        ratio = mean_response / mean_instruction if mean_instruction else 0.0
    return MethodScore(failure_rate=rate, failures=fails, missing_marker=missing, success=1.0 - rate,
                       score=(1.0 - rate) * ratio, cut_at_max_tokens=sum(e.finish_reason == "length" for e in evolved))


def propose_methods(optimizer: LLM, prompts: PromptLibrary, trajectory: list[dict], method: str,
                    *, candidates: int, controls: Mapping[str, Any] | None = None) -> list[Candidate]:
    """m independent analysis + optimization conversations; sample j uses ``sample_index=j`` in both turns."""
    analysis = {"role": "user", "content": prompts.render(
        ANALYSIS_TEMPLATE, trajectory=json.dumps(trajectory, ensure_ascii=False))}
    # optimize.controls (over roles.optimizer's) shape the optimization turn, whose answer has a fixed form
    # (the fenced method); the analysis is free text with the role's own controls
    merged = optimizer.role.controls.merged(controls)
    feedbacks = optimizer.generate([optimizer.request([analysis], sample_index=j) for j in range(candidates)],
                                   desc="optimizer: analysis")
    optimization = {"role": "user", "content": prompts.render(OPTIMIZATION_TEMPLATE, method=method)}
    asked = [j for j, f in enumerate(feedbacks) if not f.failed]  # no feedback, no second turn
    answers = dict(zip(asked, optimizer.generate(
        [optimizer.request([analysis, {"role": "assistant", "content": feedbacks[j].text}, optimization], sample_index=j,
                           controls=merged)
         for j in asked], desc="optimizer: optimization")))
    out = []
    for j, feedback in enumerate(feedbacks):
        answer = answers.get(j)
        if feedback.failed or answer.failed:
            failed = feedback if feedback.failed else answer
            out.append(Candidate(index=j, feedback=None if feedback.failed else feedback.text, answer=None,
                                 method=None, parse_error=f"call failed: {failed.failure_reason}: {failed.error}"))
            continue
        parsed, error = parse_optimized_method(answer.text)
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


def optimize_method(pool: list[dict], dev: list[dict], *, initial_method: str, evolver: LLM,
                    optimizer: LLM, prompts: PromptLibrary, settings: OptimizeSettings,
                    rng: random.Random, evolve_controls: Mapping[str, Any] | None = None,
                    few_shot: bool = False) -> OptimizeResult:
    """Run the optimization loop. ``pool`` and ``dev`` hold {"id", "instruction", "input"} items.
    ``evolve_controls``: ``evolve.controls``, for the evolving calls (the method is scored as the rounds use it)."""
    temperature = settings.evolver_temperature
    current_method = initial_method
    current = score_method(evolver, prompts, dev, initial_method, temperature=temperature, desc="step 0",
                           controls=evolve_controls, few_shot=few_shot)
    result = OptimizeResult(method=initial_method, initial=current, best=current, initial_method=initial_method,
                            dev_size=len(dev))
    stale = 0  # steps since the best rate last decreased
    stale_unparsed = 0  # of those, steps whose candidates all failed to parse
    for step in range(1, int(settings.steps) + 1):
        batch = rng.sample(pool, int(settings.batch_size))
        trajectory, unparsed = build_trajectory(evolver, prompts, [b["instruction"] for b in batch],
                                                current_method, rounds=int(settings.trajectory_rounds), temperature=temperature,
                                                controls=evolve_controls, few_shot=few_shot)
        proposals = propose_methods(optimizer, prompts, trajectory, current_method,
                                    candidates=int(settings.candidates), controls=settings.controls)
        for c in proposals:
            if c.method is not None:
                c.dev = score_method(evolver, prompts, dev, c.method, temperature=temperature,
                                     desc=f"step {step} candidate {c.index}", controls=evolve_controls,
                                     few_shot=few_shot)
        parsed = sum(c.method is not None for c in proposals)
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
    return result


def usability(result: OptimizeResult, settings: OptimizeSettings) -> dict:
    """Can the evolver follow the initial and the resulting method's format? And what evolving does if not."""
    limit = float(settings.unusable_failure_rate)
    initial_ok = result.initial.failure_rate < limit
    method_ok = result.best.failure_rate < limit
    out = {"unusable_failure_rate": limit, "initial_method_usable": initial_ok, "method_usable": method_ok,
           "fallback": None, "message": None}
    if not method_ok:
        which = "the initial method" if result.method == result.initial_method else "the optimized method"
        out["message"] = (
            f"the evolver cannot follow the evolving method's format: {which} fails "
            f"{result.best.failures} of {result.dev_size} "
            f"development items ({result.best.missing_marker} without the final-instruction marker, "
            f"{result.best.cut_at_max_tokens} answers cut at max_tokens), at or above "
            f"optimize.unusable_failure_rate {limit}")
        if settings.on_unusable == "evol":
            out["fallback"] = "evol"
            out["message"] += "; evolve.strategy auto falls back to Evol-Instruct's hand-written methods (evol)"
        elif settings.on_unusable == "keep":
            out["message"] += "; evolving with it anyway (optimize.on_unusable: keep)"
    return out


def curve(result: OptimizeResult) -> list[dict]:
    """Plot rows: step 0 is the initial method; each later step the current method after selection."""
    rows = [{"step": 0, "failure_rate": result.initial.failure_rate, "best_failure_rate": result.initial.failure_rate}]
    rows += [{"step": r["step"], "failure_rate": r["current_failure_rate"], "best_failure_rate": r["best_failure_rate"]}
             for r in result.log]
    return rows


def summary(result: OptimizeResult, stats: dict[str, dict[str, int]], usable: dict | None = None) -> dict:
    """metrics/optimize.json; ``stats`` maps a role name to its ``LLM.stats``, ``usable`` is :func:`usability`."""
    return {
        **(usable or {}),
        "initial_missing_marker": result.initial.missing_marker,
        "initial_cut_at_max_tokens": result.initial.cut_at_max_tokens,
        "parseable_candidates": sum(r["parseable_candidates"] for r in result.log),
        "candidates_proposed": sum(len(r["candidates"]) for r in result.log),
        "optimized": result.method != result.initial_method,
        "skipped": False,
        "initial_failure_rate": result.initial.failure_rate,
        "best_failure_rate": result.best.failure_rate,
        "per_step": curve(result),
        "steps_run": result.steps_run,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "calls": sum(s["calls"] for s in stats.values()),
        "cache_hits": sum(s["cache_hits"] for s in stats.values()),
        "llm": stats,
    }
