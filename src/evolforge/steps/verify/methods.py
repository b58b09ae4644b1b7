"""The three verification methods over a batch of items: their requests (every call through the call cache, in one
``generate`` per kind so a backend batches them), their sandbox runs (``workers`` at a time) and their verdicts.
Each returns, per item, a :class:`Result`; an item whose calls or runs failed gets ``unsure`` with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.steps.common.answer_check import extract_code, final_number
from evolforge.steps.common.function_runs import FunctionRun, Runner, run_all, run_function
from evolforge.steps.common.responses import response_requests
from evolforge.steps.verify.code_tests import (SOLUTION_TEMPLATE, TESTS_TEMPLATE, answer_examples, function_name,
                                               judge_runs, parse_tests, program_for, stated_examples)
from evolforge.steps.verify.correctness import (CORRECTNESS_TEMPLATE, LABELS, REASON_TEMPLATE, label_verdict,
                                                parse_reason)
from evolforge.steps.verify.numeric import (PROGRAM_TEMPLATE, compare_values, numeric_evidence, program_value,
                                            stated_values)
from evolforge.steps.verify.settings import VerifySettings


@dataclass(frozen=True)
class Result:
    """One item's verification: the four columns it writes."""

    method: str
    verdict: str  # right | wrong | unsure
    evidence: str  # JSON
    confidence: float | None  # estimated probability that the answer is right


@dataclass(frozen=True)
class Item:
    task: str  # the question Q: instruction (+ "\n" + input)
    instruction: str
    input: str
    answer: str


def _ask(template: str, prompts: PromptLibrary, **variables) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompts.render(template, **variables)}]


def code_requests(items: Sequence[Item], llm: LLM, prompts: PromptLibrary, settings: VerifySettings) -> list:
    """Per item, in order: its ``test_sets`` requests for tests, then its ``solutions`` requests for peers."""
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}
    requests = []
    for item in items:
        name = function_name(item.task)
        requests += [llm.request(_ask(TESTS_TEMPLATE, prompts, task=item.task, name=name,
                                      n=settings.tests_per_set),
                                 max_tokens=settings.tests_max_tokens, sample_index=s, **sampling)
                     for s in range(settings.test_sets)]
        requests += [llm.request(_ask(SOLUTION_TEMPLATE, prompts, task=item.task, name=name),
                                 max_tokens=settings.solution_max_tokens, sample_index=s, **sampling)
                     for s in range(settings.solutions)]
    return requests


def verify_code(items: Sequence[Item], llm: LLM, prompts: PromptLibrary, settings: VerifySettings,
                runner: Runner | None = None, texts: Sequence[str | None] | None = None) -> list[Result]:
    """The task's own examples, the answer's own, and tests written for each instruction (``test_sets``
    samples), ``solutions`` peers; every program run on every test in the sandbox; the verdict by
    :func:`evolforge.steps.verify.code_tests.judge_runs`. ``texts``: the answers to :func:`code_requests`
    where the caller asked them (in one call with other methods' requests); None: asked here."""
    runner = runner or (lambda program, tests: run_function(program, tests, settings.case_timeout_s,
                                                            settings.memory_mb))
    names = [function_name(item.task) for item in items]
    if texts is None:
        requests = code_requests(items, llm, prompts, settings)
        texts = llm.complete(requests, desc="verify code") if requests else []
    per = settings.test_sets + settings.solutions
    plans = []
    for k, (item, name) in enumerate(zip(items, names)):
        answers = texts[k * per:(k + 1) * per]
        # the task's own, then those the answer states for itself: never dropped
        examples = list(dict.fromkeys(stated_examples(item.task, name) + answer_examples(item.answer, name)))
        written = [t for text in answers[:settings.test_sets] for t in parse_tests(text, name)]
        tests = list(dict.fromkeys(examples + written))
        programs = [program_for(item.answer, name, item.task)] + [program_for(t, name, item.task)
                                                                  for t in answers[settings.test_sets:]]
        plans.append((name, tests, programs, sum(t is None for t in answers), len(examples)))
    jobs = [(k, p) for k, (_, tests, programs, _, _) in enumerate(plans) if tests
            for p, program in enumerate(programs) if program is not None]
    runs = run_all(runner, [(plans[k][2][p], plans[k][1]) for k, p in jobs], settings.workers)
    by_item: dict[int, dict[int, FunctionRun]] = {}
    for (k, p), run in zip(jobs, runs):
        by_item.setdefault(k, {})[p] = run
    results = []
    for k, (name, tests, programs, failed_calls, examples) in enumerate(plans):
        verdict = judge_runs(tests, [by_item.get(k, {}).get(p) for p in range(len(programs))], settings.min_pass,
                             examples, settings.consensus)
        evidence = {"function": name, "failed_calls": failed_calls, **verdict.evidence}
        results.append(Result("code_tests", verdict.verdict, json.dumps(evidence, sort_keys=True), verdict.confidence))
    return results


def _sample_requests(item: Item, llm: LLM, prompts: PromptLibrary, settings: VerifySettings,
                     response_sampling: dict[str, Any], indices: range) -> list:
    """The sampled answers ``indices`` (0-based) to ``item``'s question: respond's own request, sampled."""
    sampling = {**response_sampling, "temperature": settings.temperature, "top_p": settings.top_p,
                "seed": settings.seed}
    return [response_requests(llm, prompts, [item.instruction], [item.input], sample_index=s + 1,
                              **sampling)[0] for s in indices]


def number_requests(items: Sequence[Item], llm: LLM, prompts: PromptLibrary, settings: VerifySettings,
                    response_sampling: dict[str, Any]) -> list:
    """The first round of :func:`verify_numbers`: per item, in order, its first samples
    (:func:`first_samples`), then its program of thought."""
    first = first_samples(settings.samples, settings.program_of_thought)
    requests = []
    for item in items:
        requests += _sample_requests(item, llm, prompts, settings, response_sampling, range(first))
        if settings.program_of_thought:
            requests.append(llm.request(_ask(PROGRAM_TEMPLATE, prompts, task=item.task), temperature=0.0,
                                        max_tokens=settings.program_max_tokens))
    return requests


def verify_numbers(items: Sequence[Item], llm: LLM, prompts: PromptLibrary, settings: VerifySettings,
                   response_sampling: dict[str, Any], texts: Sequence[str | None] | None = None) -> list[Result]:
    """``samples`` more answers to each question (respond's own request, sampled) and a program of thought; the
    greedy answer's final number against theirs (:func:`evolforge.steps.verify.numeric.compare_values`).

    The program and the first samples come first, as many as could make the answer right on their own (more than
    half of every recomputation asked for); an item they all agree with is right whatever the rest would give, so it
    is not sampled further (:func:`first_samples`), and each sample it skipped counts as one that gave no number (its
    confidence is then a lower bound). The other items get the rest of their samples. ``texts``: the answers to
    the first round (:func:`number_requests`) where the caller asked them; None: asked here."""
    first = first_samples(settings.samples, settings.program_of_thought)
    if texts is None:
        requests = number_requests(items, llm, prompts, settings, response_sampling)
        texts = llm.complete(requests, desc="verify numbers") if requests else []
    per = first + int(settings.program_of_thought)
    programs = [extract_code(texts[k * per + first] or "") if settings.program_of_thought else None
                for k in range(len(items))]
    ran = (run_all(program_value, [(code, settings.case_timeout_s * 2, settings.memory_mb) for code in programs],
                   settings.workers) if settings.program_of_thought else [(None, None)] * len(items))
    samples = [[final_number(t) if t else None for t in texts[k * per:k * per + first]] for k in range(len(items))]
    rest = [k for k, item in enumerate(items)
            if compare_values(stated_values(item.answer), samples[k] + [None] * (settings.samples - first)
                              + [ran[k][0]] * settings.program_of_thought, settings.tolerance)[0] != "right"]
    more = [r for k in rest for r in _sample_requests(items[k], llm, prompts, settings, response_sampling,
                                                       range(first, settings.samples))]
    texts = llm.complete(more, desc="verify numbers, more samples") if more else []
    extra = settings.samples - first
    for j, k in enumerate(rest):
        samples[k] += [final_number(t) if t else None for t in texts[j * extra:(j + 1) * extra]]
    results = []
    for k, item in enumerate(items):
        stated = stated_values(item.answer)
        skipped = settings.samples - len(samples[k])
        program, note = ran[k]
        values = samples[k] + [None] * skipped + ([program] if settings.program_of_thought else [])
        verdict, confidence, why = compare_values(stated, values, settings.tolerance)
        results.append(Result("numeric", verdict, numeric_evidence(final_number(item.answer), stated, samples[k],
                                                                   program, note, why, skipped), confidence))
    return results


def first_samples(samples: int, program: bool) -> int:
    """How many samples go with the program in the first round: the fewest that, all agreeing with the answer,
    make more than half of the ``samples`` (+ the program) recomputations asked for.

    >>> first_samples(4, True), first_samples(2, True), first_samples(4, False), first_samples(0, True)
    (2, 1, 3, 0)
    """
    return max(0, min(samples, (samples + program) // 2 + 1 - program))


def verify_judged(items: Sequence[Item], llm: LLM, prompts: PromptLibrary, settings: VerifySettings) -> list[Result]:
    """The judge role's verdict over the labels right / wrong (P(right) with ``probabilities``) and its reason."""
    labels = [llm.request(_ask(CORRECTNESS_TEMPLATE, prompts, task=item.task, answer=item.answer),
                          choices=LABELS, rank=settings.probabilities, max_tokens=None if settings.probabilities
                          else 2) for item in items]
    label_texts = llm.complete(labels, desc="verify judge") if labels else []
    reasons: list[str | None] = [None] * len(items)
    if settings.reason_max_tokens and items:
        reasons = llm.complete([llm.request(_ask(REASON_TEMPLATE, prompts, task=item.task, answer=item.answer),
                                            max_tokens=settings.reason_max_tokens) for item in items],
                               desc="verify judge reasons")
    results = []
    for text, reason_text in zip(label_texts, reasons):
        verdict, p_right, failure = label_verdict(text, settings.probabilities, settings.right_at, settings.wrong_at)
        said, reason = parse_reason(reason_text)
        if failure is not None and said is not None:  # the labels could not be read: the reason's first word
            verdict = "unsure" if said == "right" and settings.right_at is None else said
        evidence = {"p_right": p_right, "reason": reason, "reason_says": said, "failure": failure}
        results.append(Result("judge", verdict, json.dumps(evidence, sort_keys=True), p_right))
    return results
