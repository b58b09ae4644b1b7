"""How a method is measured on the development set: its evol failure rate under a failure function
(:class:`FailureRules`), and the judge's difficulty of the instructions it evolves (:func:`dev_difficulty`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from evolforge.core.prompts import PromptLibrary
from evolforge.core.text import question_text
from evolforge.llm.cached import LLM
from evolforge.llm.together import Alongside, generate_beside
from evolforge.llm.types import Completion
from evolforge.steps.common import copying, elimination
from evolforge.steps.common.difficulty import difficulty_scores
from evolforge.steps.common.repetition import RepetitionTest, repetition_test
from evolforge.steps.common.evolving import (Evolution, EvolvingCall, evolve_pairs, evolve_with_methods,
                                             worked_example_additions)
from evolforge.steps.common.responses import response_requests
from evolforge.steps.evolve.settings import INSTRUCTION_RULES, RESPONSE_RULES, EvolveSettings
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.optimize.result import MethodScore, OptimizeResult

# A failure reason in the words the optimizer reads beside a trajectory stage (optimize.trajectory_verdicts); a
# reason not listed reads as its name with spaces
VERDICT_WORDS = {
    elimination.EMPTY: "the rewrite is empty",
    elimination.UNCHANGED: "the rewrite is the instruction again, adding nothing (at most one word swapped)",
    elimination.TEMPLATE_WORDS: "the rewrite carries the method's own labels or template words",
    elimination.MISSING_MARKER: "the answer lacks the reply format's #Finally Rewritten Instruction# line",
    elimination.TRUNCATED: "the answer was cut at its length limit",
    elimination.REPETITIVE: "the rewrite repeats itself in a loop",
    elimination.COPIED_EXAMPLE: "the rewrite copies a phrase of the worked example",
    elimination.COPIED_METHOD: "the rewrite copies sentences of the method itself",
    elimination.CHATTER: "the rewrite talks to the user or asks for input instead of being an instruction",
    elimination.NOT_AN_INSTRUCTION: "the rewrite answers or solves the instruction instead of asking a more "
                                    "complex version of it",
    elimination.STATED_ANSWER: "the rewrite states the answer to its own question",
    elimination.DROPPED_GIVEN: "the rewrite leaves out a number its parent gives",
}


@dataclass(frozen=True)
class FailureRules:
    """What fails a development item's evolution (``optimize.failure``): ``rule_f`` (the papers' F on the evolver's
    answer to the evolved instruction, a missing final-instruction marker failing too) or ``elimination`` (the
    rounds' own rules, as ``evolve.elimination`` and ``evolve.repetition`` set them: the evolved instruction's text
    rules, then its answer's, F among them; the judge's checks are left out, they cost calls)."""

    kind: str = "rule_f"
    instruction: tuple[tuple[str, bool], ...] = ()  # evolve.elimination's switches of the text rules
    response: tuple[tuple[str, bool], ...] = ()  # ... and of the answer's
    repetition: RepetitionTest = RepetitionTest()
    example_additions: frozenset[tuple[str, ...]] = frozenset()  # what the worked examples add (evolve.few_shot)

    @classmethod
    def of(cls, kind: str, evolve: EvolveSettings, prompts: PromptLibrary) -> "FailureRules":
        additions = worked_example_additions(prompts, ["auto"]) if evolve.few_shot else frozenset()
        return cls(kind, tuple((k, evolve.rule(k)) for k in INSTRUCTION_RULES),
                   tuple((k, evolve.rule(k)) for k in RESPONSE_RULES), repetition_test(evolve.repetition),
                   additions)

    def instruction_failure(self, parent: str, evolution: Evolution,
                            method_phrases: frozenset[tuple[str, ...]] = frozenset()) -> str | None:
        """Why the evolution fails before it is answered, or None (``method_phrases``: those of the method text it
        was evolved with, :func:`~evolforge.steps.common.copying.method_phrases`)."""
        if evolution.instruction is None:  # as a round: an answer cut before the marker fails by the cut
            cut = self.kind == "elimination" and dict(self.instruction).get("truncated", True)
            return elimination.TRUNCATED if cut and evolution.finish_reason == "length" else elimination.MISSING_MARKER
        if self.kind != "elimination":
            return None
        return elimination.instruction_failure(parent, evolution.instruction, finish_reason=evolution.finish_reason,
                                               repetition=self.repetition, example_additions=self.example_additions,
                                               method_phrases=method_phrases,
                                               **dict(self.instruction))

    def verdict(self, parent: str, evolution: Evolution,
                method_phrases: frozenset[tuple[str, ...]] = frozenset()) -> str:
        """:meth:`instruction_failure` in words, for a trajectory stage (``optimize.trajectory_verdicts``): "passed"
        or "failed: <why>". The answer's rules are not applied: a trajectory has no answers.

        >>> FailureRules("elimination").verdict("Add 2 and 3.", Evolution("Add 2 and 3.", "...", "stop"))
        'failed: the rewrite is the instruction again, adding nothing (at most one word swapped)'
        """
        why = self.instruction_failure(parent, evolution, method_phrases)
        return "passed" if why is None else f"failed: {VERDICT_WORDS.get(why, why.replace('_', ' '))}"

    def response_failure(self, response: Completion, parent_answer: str | None = None) -> str | None:
        """Why the answer to a surviving evolution fails it, or None (a failed call fails it with its reason).
        ``parent_answer``: the development item's own answer, for ``same_answer`` (as a round's parent's)."""
        if response.failed:
            return response.failure_reason or "failed"
        if self.kind != "elimination":
            return elimination.AUTO_FAILURE if elimination.auto_evol_failure(response.text) else None
        return elimination.response_failure(response.text, parent_answer=parent_answer, **dict(self.response))


class Measured(NamedTuple):
    """One development item evolved with one method, and what came of it."""

    evolution: Evolution
    reason: str | None  # why it failed; None: it evolved
    response: str | None  # the evolver's answer to it; None: not answered (failed before), or the call failed


def measure(evolver: LLM, prompts: PromptLibrary, dev: list[dict], jobs: list[tuple[str, int]], *, call: EvolvingCall,
            rules: FailureRules, desc: str, evolved: list[Evolution] | None = None,
            alongside: Alongside | None = None) -> list[Measured]:
    """Each job (method text, development item index) evolved, the evolutions ``rules`` do not fail already
    answered, and each judged by ``rules``: one call to the evolver for the evolutions (``evolved``: made already by
    the caller), one for the answers (``alongside``: another role's call decoded in the same batches,
    :func:`~evolforge.llm.together.generate_beside`)."""
    if evolved is None:
        evolved = evolve_pairs(evolver, prompts, [(m, dev[k]["instruction"]) for m, k in jobs], call,
                               desc=f"{desc}: evolve")
    phrases = {m: copying.method_phrases(m) for m in dict.fromkeys(m for m, _ in jobs)}
    reasons: list[str | None] = [rules.instruction_failure(dev[k]["instruction"], e, phrases[m])
                                 for (m, k), e in zip(jobs, evolved)]
    answered = [j for j, why in enumerate(reasons) if why is None]
    requests = response_requests(evolver, prompts, [evolved[j].instruction for j in answered],
                                 [dev[jobs[j][1]].get("input") or "" for j in answered], temperature=0.0)
    responses = generate_beside(evolver, requests, alongside, f"{desc}: respond") if answered or alongside else []
    texts: list[str | None] = [None] * len(jobs)
    for j, response in zip(answered, responses):
        reasons[j] = rules.response_failure(response, dev[jobs[j][1]].get("output"))
        texts[j] = None if response.failed else response.text
    return [Measured(e, r, t) for e, r, t in zip(evolved, reasons, texts)]


def score_methods(evolver: LLM, prompts: PromptLibrary, dev: list[dict], methods: list[str], *, call: EvolvingCall,
                  desc: str = "dev", rules: FailureRules = FailureRules(), evolved: list[Evolution] | None = None,
                  alongside: Alongside | None = None) -> list[MethodScore]:
    """Evolve the whole development set with each of ``methods``, answer each evolution that ``rules`` do not fail
    already, and count the failures (``rules``: :class:`FailureRules`). ``evolved``: those evolutions (method-major),
    made already by the caller in a larger call; None: made here.

    All methods' evolutions go to the evolver as one call, then all their answers as one: a step's candidates
    fill the evolver's batches together (a development set of 10 on one method leaves a batch of 6 half empty
    every other round). ``call``: the evolving call, as the rounds make it (``evolve.method_*``, few-shot,
    ``evolve.missing_marker``) at ``optimize.evolver_temperature``. :func:`evolforge.steps.optimize.racing.race`
    measures them item by item instead, stopping those that can no longer win. ``alongside``: another role's call
    decoded with the answers (:func:`measure`)."""
    n = len(dev)
    found = measure(evolver, prompts, dev, [(m, k) for m in methods for k in range(n)], call=call, rules=rules,
                    desc=desc, evolved=evolved, alongside=alongside)
    return [method_score(found[m * n:(m + 1) * n]) for m in range(len(methods))]


def method_score(items: list[Measured], cut: str | None = None) -> MethodScore:
    """One method's :class:`MethodScore` from its measured development items (all of them, or the first ones of a
    candidate ``cut`` there: :mod:`evolforge.steps.optimize.racing`)."""
    n = len(items)
    fails = sum(m.reason is not None for m in items)
    rate = fails / n if n else 0.0  # none measured: stopped before its first item (nothing to beat: module racing)
    ratio = 0.0
    pairs = [(m.evolution.instruction, m.response) for m in items if m.response is not None]
    if pairs:  # the reference code's length ratio, over the evolutions that were answered
        mean_instruction = sum(len(q) for q, _ in pairs) / len(pairs)
        ratio = (sum(len(t) for _, t in pairs) / len(pairs)) / mean_instruction if mean_instruction else 0.0
    by_reason: dict[str, int] = {}
    for m in items:
        if m.reason is not None:
            by_reason[m.reason] = by_reason.get(m.reason, 0) + 1
    return MethodScore(failure_rate=rate, failures=fails, missing_marker=sum(lacks_marker(m.evolution) for m in items),
                       success=1.0 - rate, score=(1.0 - rate) * ratio,
                       cut_at_max_tokens=sum(m.evolution.finish_reason == "length" for m in items),
                       failures_by_reason=dict(sorted(by_reason.items())), measured=n, cut=cut)


def lacks_marker(evolution: Evolution) -> bool:
    """The evolver's answer holds no final-instruction marker (or there is no answer), whatever
    ``evolve.missing_marker`` made of it."""
    return evolution.raw is None or elimination.parse_final_instruction(evolution.raw) is None


def score_method(evolver: LLM, prompts: PromptLibrary, dev: list[dict], method: str, **options) -> MethodScore:
    """:func:`score_methods` for one method."""
    return score_methods(evolver, prompts, dev, [method], **options)[0]


def dev_difficulty(result: OptimizeResult, dev: list[dict], judge: LLM, prompts: PromptLibrary,
                   settings: JudgeSettings, evolver: LLM, call: EvolvingCall) -> dict[str, Any]:
    """The judge's mean difficulty (0-100; the expected score with ``judge.probabilities``) of the development
    seeds and of their evolutions under the initial and the resulting method: the evolutions are the scoring
    runs' own (the same requests, read back from the call cache), those without a final instruction left out."""
    methods = list(dict.fromkeys([result.initial_method, result.method]))
    evolved = evolve_with_methods(evolver, prompts, [d["instruction"] for d in dev], methods, call,
                                  desc="dev difficulty: evolutions")
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
