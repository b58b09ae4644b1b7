"""Racing (``optimize.racing``): a step's candidates measured a few development items at a time, all of them
together, each stopped once it can no longer win.

Every round hands each candidate still running its next items (the evolver's batch shared among them, and never
more items than the candidate needs to reach the limit below), evolves them in one call, answers the evolutions no
rule failed in one more, and stops:

- ``cannot_win``: a candidate that has failed ``limit`` development items. Under ``lowest_failure`` the limit is the
  best method's total (a candidate must fail strictly fewer to replace it), set only where no later step reads
  which candidate the step chose (the last step, or one after which patience stops the run): otherwise that choice,
  the step's best candidate even when worse than the current method, steers the next trajectory. Under
  ``no_regression`` it is one more than the current method's total (a candidate that fails more is never taken);
- ``outranked`` (``lowest_failure``): a candidate that has failed more items than another can fail at worst (its
  failures so far plus the items it has left; a known total for a candidate written back unchanged), or as many
  where that other one comes first (ties go to the lower index): it cannot be the step's choice;
- ``no_reply_format``: a candidate whose first ``format_cut`` evolutions all lack the final-instruction marker: the
  evolver does not answer in the method's format, so the method is not one it can follow.

The first two never stop a candidate that could still become the result, or the method the next step starts from:
the chosen method is the one a full measurement chooses, from the same answers (the evolver at temperature 0; a
backend whose numerics depend on the batch, llama.cpp among them, may answer a request differently in another
batch, as anywhere else). The third is a judgement: a method that misses its marker on its first items but would
keep it on every later one is stopped too (``format_cut: 0`` never stops one on that ground). A step whose
candidates were all stopped keeps its current method, where the paper moves to its best candidate: which one that
is changes nothing when no later step runs. A candidate whose text is a plan about its trajectory's instructions
(``optimize.copy_cut``: :func:`~evolforge.steps.optimize.trajectory.not_a_method`) is not raced at all: it comes
here with its score (``cut: copies_trajectory``, nothing measured) and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cached import LLM
from evolforge.steps.common.evolving import Evolution, EvolvingCall
from evolforge.steps.optimize.result import Candidate, MethodScore
from evolforge.steps.optimize.scoring import (FailureRules, Measured, lacks_marker, measure, method_score,
                                              score_methods)
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.trajectory import build_trajectory

CANNOT_WIN = "cannot_win"
OUTRANKED = "outranked"
NO_REPLY_FORMAT = "no_reply_format"


@dataclass(frozen=True)
class Race:
    """When a candidate stops (the module doc)."""

    limit: int | None = None  # a candidate that has failed this many development items cannot win; None: no limit
    rank: bool = False  # lowest_failure: one that fails more than another can at worst cannot be the step's choice
    format_cut: int = 0  # a candidate whose first this many evolutions all lack the final marker stops; 0: never

    @classmethod
    def for_step(cls, settings: OptimizeSettings, best: MethodScore, current: MethodScore, *,
                 last: bool) -> Race | None:
        """The race of a step's candidates against ``best`` (the result so far) and ``current`` (the method they
        would replace); ``last``: no later step reads the step's choice. None: ``optimize.racing`` is off."""
        if not settings.racing:
            return None
        if settings.selection == "no_regression":
            return cls(limit=current.failures + 1, format_cut=settings.format_cut)
        return cls(limit=best.failures if last else None, rank=True, format_cut=settings.format_cut)


def race(evolver: LLM, prompts: PromptLibrary, dev: list[dict], methods: list[str], *, call: EvolvingCall,
         rules: FailureRules, limits: Race, desc: str, order: Sequence[int] | None = None,
         known: Sequence[tuple[int, int]] = ()) -> list[MethodScore]:
    """Each of ``methods`` measured on the development set in order, item by item, until it is stopped (its
    :class:`MethodScore` counts the items it was measured on: ``measured``, and ``cut`` says why it stopped).
    ``order``: each method's candidate index (ties go to the lower); ``known``: (index, failures) of candidates
    whose total is known without measuring (written back unchanged)."""
    n, order = len(dev), list(order) if order is not None else list(range(len(methods)))
    found: list[list[Measured]] = [[] for _ in methods]
    cut: list[str | None] = [None] * len(methods)
    batch = evolver.role.settings.batch_size  # requests decoded together (a server: those in flight)
    _stop(found, cut, limits, order, known, n)
    rounds = 0
    while running := [j for j, f in enumerate(found) if cut[j] is None and len(f) < n]:
        rounds += 1
        share = -(-batch // len(running))  # the evolver's batch shared among the candidates still running
        jobs, owners = [], []
        for j in running:
            failed = sum(m.reason is not None for m in found[j])
            room = n if limits.limit is None else limits.limit - failed  # items that could stop it
            for k in range(len(found[j]), len(found[j]) + min(share, n - len(found[j]), room)):
                jobs.append((methods[j], k))
                owners.append(j)
        for j, item in zip(owners, measure(evolver, prompts, dev, jobs, call=call, rules=rules,
                                           desc=f"{desc} (items, round {rounds})")):
            found[j].append(item)
        _stop(found, cut, limits, order, known, n)
    return [method_score(f, c) for f, c in zip(found, cut)]


def _stop(found: list[list[Measured]], cut: list[str | None], limits: Race, order: list[int],
          known: Sequence[tuple[int, int]], n: int) -> None:
    """Mark the candidates that stop now (``cut``), by the rules of the module doc; a finished one is never cut."""
    failures = [sum(m.reason is not None for m in f) for f in found]
    still_open = [cut[j] is None and len(found[j]) < n for j in range(len(found))]
    for j, f in enumerate(found):
        if not still_open[j]:
            continue
        head = f[:limits.format_cut]
        if limits.format_cut and len(head) == limits.format_cut and all(
                lacks_marker(m.evolution) for m in head):
            cut[j] = NO_REPLY_FORMAT
        elif limits.limit is not None and failures[j] >= limits.limit:
            cut[j] = CANNOT_WIN
    if not limits.rank:
        return
    # a candidate stopped for its format is out of the running: it beats no one
    worst = [(order[i], failures[i] + n - len(found[i])) for i in range(len(found)) if cut[i] != NO_REPLY_FORMAT]
    worst += list(known)
    for j in range(len(found)):
        if cut[j] is None and still_open[j] and any(
                i != order[j] and (failures[j] > w or (failures[j] == w and i < order[j])) for i, w in worst):
            cut[j] = OUTRANKED


@dataclass(frozen=True)
class Development:
    """What measures a method: the development set, the evolver and its call, the failure rules, the settings."""

    dev: list[dict]
    evolver: LLM
    prompts: PromptLibrary
    call: EvolvingCall
    rules: FailureRules
    settings: OptimizeSettings

    def trajectory(self, batch: list[dict], method: str,
                   first: list[Evolution] | None) -> tuple[list[dict], list[dict]]:
        """The mini-batch evolved ``optimize.trajectory_rounds`` times with ``method`` (``first``: its first round)."""
        return build_trajectory(self.evolver, self.prompts, [b["instruction"] for b in batch], method,
                                rounds=int(self.settings.trajectory_rounds), call=self.call, first=first,
                                verdicts=self.rules if self.settings.trajectory_verdicts else None)

    def measure(self, candidates: list[Candidate], best: MethodScore, current: MethodScore, *, last: bool,
                desc: str) -> None:
        """Score each candidate with a method that is not ``current``'s own and no score yet, on the development
        set; under ``optimize.racing`` each stops once it cannot win against ``best`` and ``current`` (``last``: no
        later step reads which one the step chose)."""
        scored = [c for c in candidates if c.method is not None and not c.unchanged and c.dev is None]
        limits = Race.for_step(self.settings, best, current, last=last)
        texts = [c.method for c in scored]
        scores = (score_methods(self.evolver, self.prompts, self.dev, texts, call=self.call, desc=desc,
                                rules=self.rules) if limits is None
                  else race(self.evolver, self.prompts, self.dev, texts, call=self.call, rules=self.rules,
                            limits=limits, desc=desc, order=[c.index for c in scored],
                            known=[(c.index, c.dev.failures) for c in candidates if c.unchanged]))
        for c, score in zip(scored, scores):
            c.dev = score
        for c in scored:
            if c.dev.cut:
                print(f"optimize: {desc}: candidate {c.name or c.index} stopped after {c.dev.measured} of "
                      f"{len(self.dev)} items ({c.dev.cut}: {c.dev.failures} failed)", flush=True)
