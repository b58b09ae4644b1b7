"""Several rewrites of each instruction, the surviving one the judge finds hardest kept
(``evolve.rewrites_per_instruction``: k). Evol-Instruct and the SLM paper evolve each instruction once (k = 1, the
default: nothing here runs); a small evolver often rewords its parent or hands over the method, so a round with k > 1
asks for k rewrites (the first is the request k = 1 makes, the others sampled with their own ``sample_index``), runs
every elimination rule on each, and keeps, per instruction, the surviving rewrite with the highest difficulty score
from the judge role (the judge stage's score prompt and settings: its call for the kept rewrite is the one the judge
stage makes, found in the cache). An instruction with one survivor keeps it unjudged; one with none fails with its
first rewrite's reason.

Cost over k = 1: (k - 1) evolving calls per instruction, the response rules' answer for each further survivor
(one call each), and one judge call per survivor of an instruction with two or more.

>>> pick([None, "unchanged", None], [40.0, None, 55.0])
2
>>> pick(["unchanged", "same_answer"], [None, None])
0
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from evolforge.core.text import question_text
from evolforge.steps.evolve.checks import RoundState

Hardness = Callable[[list[str]], list[float | None]]  # questions -> the judge's 0-100 difficulty (None: unparsed)
CANDIDATE_STRIDE = 1_000_000  # sample_index of rewrite j of round r: r + j x this (j = 0: the k = 1 request's)


def candidate_sample_index(round_index: int, candidate: int) -> int:
    """The ``sample_index`` of rewrite ``candidate`` (0-based) of an instruction in round ``round_index``."""
    return round_index + candidate * CANDIDATE_STRIDE


def pick(reasons: Sequence[str | None], scores: Sequence[float | None]) -> int:
    """Which of one instruction's rewrites to keep: the survivor (reason None) with the highest score (None ranks
    last, ties go to the earlier rewrite); the first rewrite when none survived."""
    alive = [j for j, reason in enumerate(reasons) if reason is None]
    if not alive:
        return 0
    return max(alive, key=lambda j: (scores[j] is not None, scores[j] or 0.0, -j))


def keep_hardest(state: RoundState, k: int, hardness: Hardness | None) -> tuple[RoundState, dict]:
    """``state`` holds k rewrites of each instruction, instruction-major (rewrite j of instruction i at i x k + j)
    after every rule; returns the state of one rewrite per instruction (:func:`pick`) and what the choice cost."""
    n = len(state.items) // k
    scores: list[float | None] = [None] * len(state.items)
    judged = [p for i in range(n) if sum(r is None for r in state.reasons[i * k:(i + 1) * k]) > 1
              for p in range(i * k, (i + 1) * k) if state.reasons[p] is None]
    if judged:
        if hardness is None:
            raise ValueError("evolve.rewrites_per_instruction > 1 needs the judge role to choose the hardest rewrite")
        found = hardness([question_text(state.candidates[p], state.items[p]["input"]) for p in judged])
        for p, score in zip(judged, found):
            scores[p] = score
    chosen = [i * k + pick(state.reasons[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]) for i in range(n)]
    fields = {name: [getattr(state, name)[p] for p in chosen] for name in state.__dataclass_fields__}
    summary = {"rewrites_per_instruction": k, "candidates": len(state.items),
               "candidates_survived": sum(r is None for r in state.reasons), "candidates_judged": len(judged),
               "candidates_failed_by_reason": dict(sorted(Counter(r for r in state.reasons if r).items()))}
    return RoundState(**fields), summary
