"""Several rewrites per instruction (evolve.rewrites_per_instruction): every rule runs on each rewrite, the surviving
one the judge scores hardest is kept, and one rewrite per instruction (the default) asks exactly what it always did."""

from __future__ import annotations

import polars as pl
import pytest

from evolforge.config.roles import Role
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.backends.fake import FakeBackend, TemplateReplies
from evolforge.llm.cached import LLM
from evolforge.steps.common import elimination
from evolforge.steps.evolve.hardest import CANDIDATE_STRIDE, candidate_sample_index, pick
from evolforge.steps.evolve.settings import EvolveSettings
from evolforge.steps.evolve.step import evolve_round, judge_hardness

TANK = "A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?"
SUM = "Add 2 and 3."
ROLE = Role.from_params("evolver", {"backend": "hf", "model": "fake"})
# rewrite j of each parent, as the fake evolver writes it
REWRITES = {
    TANK: [TANK,  # j = 0: the parent again (unchanged)
           "A tank holds 500 litres and drains at 25 litres per minute while 5 litres per minute flow in. How long "
           "until it is empty?",
           "A tank holds 500 litres and drains at 25 litres per minute; after 8 minutes the drain slows to 15 litres "
           "per minute. How long until it is empty, and how much has drained by then?"],
    SUM: [SUM, "Add 2 and 3", "add 2 and 3!"],  # none survives
}
ANSWERS = {REWRITES[TANK][1]: "It empties after 25 minutes.", REWRITES[TANK][2]: "After 26 minutes; 500 litres."}
SCORES = {REWRITES[TANK][1]: 62.0, REWRITES[TANK][2]: 71.5}


def _round(k: int, hardness=None, seen: list | None = None):
    def evolve(variables: dict, request) -> str:
        if seen is not None:
            seen.append(request.sample_index)
        return REWRITES[variables["instruction"]][request.sample_index // CANDIDATE_STRIDE]

    def respond(variables: dict, request) -> str:
        return ANSWERS.get(variables["instruction"], "It is done in many careful steps, explained one by one.")

    replies = TemplateReplies({"evolve/depth.j2": evolve, "respond/response.j2": respond})
    fake = LLM(FakeBackend(replies), None, role=ROLE)
    pool = pl.DataFrame({"id": ["t", "s"], "root_id": ["t", "s"], "parent_id": [None, None], "round": [0, 0],
                         "method": ["seed", "seed"], "instruction": [TANK, SUM], "input": ["", ""],
                         "output": ["20 minutes", "5"]})
    settings = EvolveSettings(strategy="evol", breadth=False, rewrites_per_instruction=k,
                              elimination={"same_problem": False})
    return evolve_round(pool, round_index=2, settings=settings, prompts=replies.watch(PromptLibrary()),
                        evolver=fake, responder=fake, hardness=hardness)


def test_the_surviving_rewrite_the_judge_scores_hardest_is_kept():
    asked: list[list[str]] = []

    def hardness(questions: list[str]) -> list[float | None]:  # a test double of the judge's score
        asked.append(questions)
        return [SCORES[q] for q in questions]

    table, pool, summary = _round(3, hardness)
    assert table.height == 2 and summary["in"] == summary["evolved"] + summary["failed"] == 2
    tank, add = table.row(0, named=True), table.row(1, named=True)
    assert (tank["status"], tank["instruction"]) == ("evolved", REWRITES[TANK][2])  # 71.5 over 62.0
    assert tank["check_response"] == ANSWERS[REWRITES[TANK][2]]  # its own answer goes on, for respond to reuse
    assert (add["status"], add["failure_reason"]) == ("failed", elimination.UNCHANGED)  # the first rewrite's reason
    assert asked == [[REWRITES[TANK][1], REWRITES[TANK][2]]]  # only an instruction with two survivors is judged
    assert summary["candidates"] == 6 and summary["candidates_survived"] == 2 and summary["candidates_judged"] == 2
    assert summary["candidates_failed_by_reason"] == {elimination.UNCHANGED: 4}
    assert pool["instruction"].to_list() == [REWRITES[TANK][2], SUM]  # keep_parent: the failed one's parent goes on


def test_one_rewrite_per_instruction_asks_what_the_round_always_asked():
    seen: list[int] = []
    table, _, summary = _round(1, hardness=None, seen=seen)
    assert seen == [2, 2]  # sample_index = the round, as before
    assert table["failure_reason"].to_list() == [elimination.UNCHANGED, elimination.UNCHANGED]
    assert "candidates" not in summary
    seen.clear()
    _round(3, hardness=lambda qs: [SCORES[q] for q in qs], seen=seen)
    assert sorted(seen) == [candidate_sample_index(2, j) for j in range(3) for _ in range(2)]
    assert candidate_sample_index(2, 0) == 2


def test_two_survivors_need_a_judge():
    with pytest.raises(ValueError, match="needs the judge role"):
        _round(3, hardness=None)
    assert judge_hardness(None, PromptLibrary(), None) is None


@pytest.mark.parametrize("reasons,scores,kept", [
    ([None, None, None], [50.0, 70.0, 70.0], 1),  # a tie goes to the earlier rewrite
    ([None, "unchanged", None], [None, 90.0, 10.0], 2),  # a score beats none, a failed rewrite is never kept
    (["unchanged", "repetitive"], [None, None], 0),
    (["unchanged", None], [None, None], 1),
])
def test_pick(reasons, scores, kept):
    assert pick(reasons, scores) == kept


def test_the_hardness_is_the_judge_stages_score_request():
    """What chooses the hardest rewrite asks the judge exactly what the judge stage asks of the kept one (its score
    request), so the judge stage finds that answer in the cache."""
    from evolforge.steps.common.difficulty import judge
    from evolforge.steps.judge.settings import JudgeSettings

    backend = FakeBackend(lambda request: "70")
    llm = LLM(backend, None, role=Role.from_params("judge", {"backend": "hf", "model": "fake"}))
    settings = JudgeSettings(constrain=False)
    assert judge_hardness(llm, PromptLibrary(), settings)([TANK]) == [70.0]
    judge(pl.DataFrame({"instruction": [TANK], "input": [""]}), llm, PromptLibrary(), score_prompt=settings.score_prompt,
          max_tokens=settings.max_tokens, constrain=settings.constrain, probabilities=settings.probabilities)
    hardness_request, level_request, score_request = backend.sent
    assert hardness_request == score_request != level_request
