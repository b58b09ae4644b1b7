"""A step's trajectory -- its mini-batch evolved with the current method, the cases the optimizer analyses -- and
what the optimizer's candidates make of it: a candidate that is no evolving method at all (:func:`not_a_method`).

>>> not_a_method(Candidate(0, "f", "a", None, "no ```Optimized Method``` block"), [], "m", 10)
'unparsed'
"""

from __future__ import annotations

from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.steps.common import copying, elimination
from evolforge.steps.common.evolving import Evolution, EvolvingCall, evolve_with_method
from evolforge.steps.optimize.result import Candidate
from evolforge.steps.optimize.scoring import FailureRules

# why a candidate is no evolving method (:func:`not_a_method`)
UNPARSED = "unparsed"  # no method could be read from the optimizer's answer
COPIES_TRAJECTORY = "copies_trajectory"  # it holds the trajectory's instructions, as a plan about those cases
NO_REPLY_FORMAT = "no_reply_format"  # the evolver's answers to it lack the final-instruction marker, every one measured
FORMAT_EVIDENCE = 3  # answers without the marker, and none with it, that show the evolver does not follow a method


def build_trajectory(evolver: LLM, prompts: PromptLibrary, instructions: list[str], method: str,
                     *, rounds: int, call: EvolvingCall, verdicts: FailureRules | None = None,
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
            evolver, prompts, current, method, call, desc=f"trajectory round {r}")
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


def not_a_method(candidate: Candidate, trajectory: list[dict], current_method: str, dev_size: int) -> str | None:
    """Why ``candidate`` is no evolving method, or None: its answer held none (``unparsed``); it holds
    :data:`~evolforge.steps.common.elimination.METHOD_COPY_PHRASES` or more phrases of the trajectory's instructions
    that the current method does not (``copies_trajectory``: a plan about those cases, not a method for any
    instruction); or every evolution it was measured on lacks the final-instruction marker, :data:`FORMAT_EVIDENCE`
    of them at least (or the whole development set, if smaller: ``no_reply_format``)."""
    if candidate.method is None:
        return UNPARSED
    if elimination.copies_method(current_method, candidate.method, trajectory_phrases(trajectory)):
        return COPIES_TRAJECTORY
    score = candidate.dev
    if score is not None and score.measured >= min(FORMAT_EVIDENCE, dev_size) and score.measured and \
            score.missing_marker == score.measured:
        return NO_REPLY_FORMAT
    return None


def trajectory_phrases(trajectory: list[dict]) -> frozenset[tuple[str, ...]]:
    """The phrases of the trajectory's instructions, every stage's (:func:`~evolforge.steps.common.copying.
    method_phrases`), which :func:`not_a_method` looks for in a candidate."""
    return frozenset().union(*(copying.method_phrases(text) for case in trajectory
                               for key, text in case.items() if key.startswith("stage") and isinstance(text, str)
                               and not key.endswith("_verdict")))


def copy_stop_phrases(trajectory: list[dict], current_method: str) -> tuple[str, ...]:
    """The trajectory's phrases the current method lacks, each as its words joined by spaces: an optimization
    answer whose words hold :data:`~evolforge.steps.common.copying.METHOD_COPY_PHRASES` of them is a
    ``copies_trajectory`` candidate however it goes on, so the optimizer may stop writing it there
    (:attr:`evolforge.config.roles.Controls.stop_phrases`)."""
    own = copying.method_phrases(current_method)
    return tuple(sorted(" ".join(p) for p in trajectory_phrases(trajectory) - own))
