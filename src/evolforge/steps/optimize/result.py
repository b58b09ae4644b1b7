"""The optimize step's result -- each method's score on the development set, each optimizer candidate, the
chosen method and its log -- and what the stage says about it.

Telling the truth about a run (``stop_reason``, :func:`usability`):

- a step whose m answers hold no parseable ```` ```Optimized Method``` ```` block says so in its log
  (``no_parseable_candidate``) and as a warning (:func:`unparseable_warning`: the stage log, the metrics'
  ``warnings``, the report); ``on_unparseable`` decides whether the stage goes on or stops there.
  ``stop_reason`` is ``no_parseable_candidate``, never ``patience`` or ``steps``, when no step produced one
  (nothing was optimized) or when patience ran out over steps that produced none;
- a method that fails at least ``unusable_failure_rate`` of the development set is one the evolver
  cannot follow (a small evolver rarely writes the final-instruction marker). The metrics say so for the
  initial and the resulting method, and ``on_unusable`` decides what evolving with ``strategy: auto``
  does with an unusable result: ``evol`` falls back to Evol-Instruct's hand-written methods (recorded
  as ``fallback`` in ``data/method/meta.json``; the evolve stage reads it), ``stop`` stops the stage
  with the message, ``keep`` evolves with the method anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evolforge.steps.optimize.settings import OptimizeSettings


@dataclass
class MethodScore:
    """How one method does on the development set."""

    failure_rate: float  # lambda = failures / dev size
    failures: int  # missing marker + responses caught by F
    missing_marker: int  # evolved answers without #Finally Rewritten Instruction#
    success: float  # 1 - failure_rate
    score: float  # success x mean response chars / mean evolved-instruction chars (reference code)
    cut_at_max_tokens: int = 0  # evolved answers that stopped at max_tokens (the usual cause of a missing marker)
    failures_by_reason: dict[str, int] = field(default_factory=dict)  # the failures, by the rule that failed each
    measured: int = 0  # development items measured: all of them, unless cut (the counts above are of these)
    cut: str | None = None  # why racing stopped measuring it (optimize.racing: evolforge.steps.optimize.racing)


@dataclass
class Candidate:
    """One optimizer sample: its feedback, its raw answer and, when it parsed, the method and its score."""

    index: int  # = sample_index of both optimizer calls
    feedback: str | None  # None when the analysis call failed
    answer: str | None  # None when the call failed (parse_error says why)
    method: str | None
    parse_error: str | None
    dev: MethodScore | None = None
    unchanged: bool = False  # the method written back as it was (scored as the current method, no calls)
    reply_format_kept: bool = False  # its reply format replaced by the current method's (optimize.keep_reply_format)
    not_a_method: str | None = None  # why it is no evolving method (evolforge.steps.optimize.trajectory.not_a_method)
    name: str | None = None  # a method from optimize.candidates_file: its name there, and where it comes from
    source: str | None = None


@dataclass
class OptimizeResult:
    method: str  # the result: the best method (see the selection rules above)
    initial: MethodScore
    best: MethodScore
    initial_method: str = ""
    dev_size: int = 0
    log: list[dict] = field(default_factory=list)  # one row per step run
    file_candidates: list[dict] = field(default_factory=list)  # optimize.candidates_file's methods, each measured
    file_chosen: int | None = None  # the one the steps start from (None: the initial method)
    optimizer_limit: str | None = None  # said once where no candidate of a step was an evolving method
    stop_reason: str = "steps"  # "steps" | "patience" | "no_parseable_candidate" (see the module doc)
    stopped_early: bool = False  # stopped before ``steps`` steps
    warnings: list[str] = field(default_factory=list)  # said in the stage log, the metrics and the report
    notes: list[str] = field(default_factory=list)  # what the development set can and cannot tell (stage log, metrics)
    outcome: str = ""  # one sentence: did the optimized method beat the initial one, and if not, why (:func:`outcome`)

    @property
    def steps_run(self) -> int:
        return len(self.log)


def unparseable_warning(step: int, candidates: list[Candidate]) -> str:
    """What a step none of whose candidates parsed says, with why each did not (counted by reason)."""
    reasons: dict[str, int] = {}
    for c in candidates:
        reasons[c.parse_error or "?"] = reasons.get(c.parse_error or "?", 0) + 1
    why = "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
    return (f"step {step}: none of the {len(candidates)} candidates parsed ({why}); the current method is kept "
            f"for this step (optimize.on_unparseable decides whether the stage goes on)")


def indistinct_dev_note(dev_size: int) -> str:
    """What the log says when the initial method fails none of the development set: no method can measure better."""
    return (f"the initial method fails none of the {dev_size} development items, so no candidate can measure as "
            f"better on this set (lowest_failure needs a lower failure rate): a larger optimize.dev_size, harder "
            f"seeds or a weaker starting method (optimize.initial_method: weak) can tell methods apart")


def outcome(result: OptimizeResult) -> str:
    """One sentence for the stage log and the metrics: the optimized method beat the initial one on the development
    set, or why it could not."""
    n = result.dev_size
    start = f"{result.initial.failures} of {n}"
    if result.best.failure_rate < result.initial.failure_rate:
        chosen = result.file_candidates[result.file_chosen] if result.file_chosen is not None else None
        which = (f"{chosen['name']} (optimize.candidates_file)" if chosen and chosen["method"] == result.method
                 else "the optimized method")
        return f"improved: {which} fails {result.best.failures} of {n} development items, the initial {start}"
    if not result.log and not result.file_candidates:
        return "kept the initial method: no optimization step ran (optimize.steps: 0)"
    if not result.file_candidates and not any(r["parseable_candidates"] for r in result.log):
        return "kept the initial method: the optimizer wrote no parseable method in any step"
    if result.initial.failures == 0:
        return f"kept the initial method: it fails none of the {n} development items, so nothing can measure better"
    tried = [c for c in result.file_candidates + [c for r in result.log for c in r["candidates"]]
             if c.get("dev") and not c.get("unchanged")]
    if not tried:
        return "kept the initial method: every method the optimizer wrote was the current one, unchanged"
    full = [c["dev"]["failures"] for c in tried if not c["dev"].get("cut")]
    said = [f"the best of {len(full)} failed {min(full)}"] if full else []
    cuts = [c["dev"]["cut"] for c in tried if c["dev"].get("cut")]
    if stopped := sum(cut != "copies_trajectory" for cut in cuts):
        said.append(f"{stopped} stopped before the end of the set, unable to fail fewer (optimize.racing)")
    if copies := cuts.count("copies_trajectory"):
        said.append(f"{copies} not measured, a plan about its trajectory's instructions (optimize.copy_cut)")
    return (f"kept the initial method: it fails {start} development items and no candidate failed fewer "
            f"({'; '.join(said)})")


NOT_A_METHOD_WORDS = {"unparsed": "no method could be read from its answer",
                      "copies_trajectory": "a plan about the trajectory's own instructions",
                      "no_reply_format": "the evolver's answers to it lack the final-instruction marker"}


def optimizer_limit(log: list[dict]) -> str | None:
    """What the stage says once (the log, the metrics, the report) when no candidate of a step was an evolving
    method (:func:`evolforge.steps.optimize.trajectory.not_a_method`): the optimizer model is the limit, and how to
    go past it. None when every step had one."""
    steps = [r for r in log if r["candidates"] and all(c["not_a_method"] for c in r["candidates"])]
    if not steps:
        return None
    reasons: dict[str, int] = {}
    for c in (c for r in steps for c in r["candidates"]):
        reasons[c["not_a_method"]] = reasons.get(c["not_a_method"], 0) + 1
    why = "; ".join(f"{k} x {NOT_A_METHOD_WORDS.get(reason, reason)}" for reason, k in sorted(reasons.items()))
    return (f"the optimizer model is the limit: in {len(steps)} of {len(log)} step(s) none of its candidates was an "
            f"evolving method ({why}). Point roles.optimizer at a stronger model (docs/how-to/models.md), or measure "
            f"methods a stronger model wrote with optimize.candidates_file (docs/how-to/optimize.md)")


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


def loop(result: OptimizeResult) -> list[dict]:
    """Each step of the loop, for the metrics and the report: every candidate (parsed or why not, its failures
    on the development set), the one chosen (None: the current method kept) and the rates after the step."""
    return [{"step": r["step"], "candidates": [candidate_row(c) for c in r["candidates"]], "chosen": r["chosen"],
             "current_failure_rate": r["current_failure_rate"], "best_failure_rate": r["best_failure_rate"],
             "improved": r["improved"]} for r in result.log]


def candidate_row(c: dict) -> dict:
    """One candidate in the metrics: parsed or why not, its failures on the items it was measured on (all of the
    development set unless racing cut it: ``measured``, ``cut``), and whether it is an evolving method at all."""
    dev = c.get("dev") or {}
    return {"index": c["index"], "parsed": c["method"] is not None, "parse_error": c["parse_error"],
            # a candidate stopped before its first item has no rate: None, not 0.0
            "failure_rate": dev.get("failure_rate") if dev.get("measured") or not dev.get("cut") else None,
            "failures": dev.get("failures"),
            "missing_marker": dev.get("missing_marker"), "measured": dev.get("measured"), "cut": dev.get("cut"),
            "not_a_method": c.get("not_a_method"), "unchanged": c.get("unchanged", False),
            "reply_format_kept": c.get("reply_format_kept", False),
            "method_chars": len(c["method"]) if c["method"] is not None else None,
            **({"name": c["name"], "source": c["source"]} if c.get("name") else {})}


def method_diff(initial: str, method: str) -> str:
    """The chosen method against the initial one, as a unified diff of their lines ("" when they are equal)."""
    import difflib

    return "\n".join(difflib.unified_diff(initial.splitlines(), method.splitlines(), "initial method", "chosen method",
                                          lineterm=""))


def summary(result: OptimizeResult, stats: dict[str, dict[str, int]], usable: dict | None = None) -> dict:
    """metrics/optimize.json; ``stats`` maps a role name to its ``LLM.stats``, ``usable`` is :func:`usability`."""
    return {
        "loop": loop(result),
        "file_candidates": [candidate_row(c) for c in result.file_candidates],
        "file_chosen": result.file_chosen,
        "optimizer_limit": result.optimizer_limit,
        "initial_failures": result.initial.failures,
        "best_failures": result.best.failures,
        "dev_size": result.dev_size,
        "method_diff": method_diff(result.initial_method, result.method),
        **(usable or {}),
        "initial_missing_marker": result.initial.missing_marker,
        "initial_failures_by_reason": result.initial.failures_by_reason,
        "best_failures_by_reason": result.best.failures_by_reason,
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
        "warnings": result.warnings,
        "notes": result.notes,
        "outcome": result.outcome,
        "calls": sum(s["calls"] for s in stats.values()),
        "cache_hits": sum(s["cache_hits"] for s in stats.values()),
        "llm": stats,
    }
