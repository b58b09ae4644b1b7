"""A round's checks on its rewrites, in the order they run (``evolve.elimination``; the rules themselves are
:mod:`evolforge.steps.common.elimination` and its families): the text rules on each rewrite, the embedder's rule on
its meaning, the rules on an answer to it (who answers: :func:`check_responder`), then the judge's checks. Each
phase reads only the items no earlier phase failed and records why an item fails in :class:`RoundState`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.llm.registry import loads_nothing_more
from evolforge.steps.common import copying, elimination
from evolforge.steps.common.embedding import Embed, pair_similarities
from evolforge.steps.common.evolving import BREADTH, worked_example_additions
from evolforge.steps.common.repetition import repetition_test
from evolforge.steps.common.responses import response_requests
from evolforge.steps.common.sameness import same_problem
from evolforge.steps.evolve.judge_checks import info_gain_verdicts, is_instruction_verdicts
from evolforge.steps.evolve.settings import INSTRUCTION_RULES, JUDGE_RULES, RESPONSE_RULES, STRATEGIES, EvolveSettings

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
class RoundState:
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


def instruction_rules(state: RoundState, settings: EvolveSettings, prompts: PromptLibrary,
                       method_text: str | None) -> None:
    """Phase 1: the text rules (:data:`INSTRUCTION_RULES`) on each evolved instruction, first failure wins
    (``method_text``: the Auto Evol-Instruct method the strategies' items were evolved with)."""
    switches = {k: settings.rule(k) for k in INSTRUCTION_RULES}
    added = worked_example_additions(prompts, state.methods) if settings.few_shot else frozenset()
    method_words = copying.method_phrases(method_text if settings.strategy != "evol" else None)
    repetition = repetition_test(settings.repetition)
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


def meaning_rules(state: RoundState, settings: EvolveSettings, embed: Embed | None) -> None:
    """Phase 2: the embedder's rule (``EMBEDDER_RULES``): a surviving rewrite that asks its parent's problem
    again in other words fails as ``same_problem`` (in-breadth rewrites are new instructions: not asked). Without
    ``embed`` nothing is asked (the evolve stage always gives one while the rule is on)."""
    alive = [i for i in state.alive() if state.methods[i] != BREADTH]
    if not (settings.rule("same_problem") and alive and embed is not None):
        return
    parents = [state.items[i]["instruction"] for i in alive]
    similarities = pair_similarities(embed, parents, [state.candidates[i] for i in alive])
    for i, parent, similarity in zip(alive, parents, similarities):
        if same_problem(parent, state.candidates[i], similarity, settings.same_problem_similarity):
            state.reasons[i] = elimination.SAME_PROBLEM


def response_rules(state: RoundState, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                   evolver: LLM, responder: LLM | None, respond_sampling: Mapping[str, Any] | None,
                   ahead: Sequence[tuple[str, str]] = ()) -> int:
    """Phase 3: the rules on an answer to each surviving instruction (:data:`RESPONSE_RULES`); the answers
    are generated only when one of those rules is on. ``same_answer`` compares it with the parent's answer (the
    pool's ``output``: a seed's reference answer, or the answer a round's check got for an evolved parent).

    ``ahead``: (instruction, input) pairs the respond stage will answer with this very request (the seeds, for
    the round that reads them), asked in the same call when the responder answers the check, so that their
    sequences fill its batches; the answers go to the call cache, where respond finds them. Returns how many were
    asked (0 when the check asks the evolver, there is no call cache, or no call is made: respond answers them)."""
    response_rules = {k: settings.rule(k) for k in RESPONSE_RULES}
    alive = state.alive()
    if not (any(response_rules.values()) and alive):
        return 0
    checker, check_sampling = check_responder(settings, evolver, responder, respond_sampling)
    if checker is not responder or checker.cache is None:  # respond would ask them again: not ahead
        ahead = ()
    requests = response_requests(checker, prompts, [state.candidates[i] for i in alive] + [q for q, _ in ahead],
                                 [state.items[i]["input"] for i in alive] + [x for _, x in ahead], **check_sampling)
    desc = f"round {round_index}: check" + (" and the seeds' answers" if ahead else "")
    answers = checker.generate(requests, desc=desc)
    for i, request, answer in zip(alive, requests, answers):
        if answer.failed:  # the item cannot be checked: it fails with the call's reason
            state.reasons[i], state.details[i] = answer.failure_reason, f"check response: {answer.error}"
            continue
        state.responses[i], state.response_finishes[i] = answer.text, answer.finish_reason
        state.response_thinking[i] = answer.thinking
        state.response_keys[i] = checker.key(request)
        state.reasons[i] = elimination.response_failure(answer.text, parent_answer=state.items[i].get("output"),
                                                        **response_rules)
    return len(ahead)


def judge_rules(state: RoundState, settings: EvolveSettings, prompts: PromptLibrary,
                judge: LLM | None) -> tuple[int, int]:
    """Phase 4: the judge's checks (:data:`JUDGE_RULES`), is it an instruction at all, then does it add
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


