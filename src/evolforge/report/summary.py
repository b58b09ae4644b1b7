"""The headline metrics of a dataset version, in one small file for ``dvc exp show`` and ``dvc metrics diff``.

Every stage's metrics file also holds its operational counters (calls, cache hits, tokens per role, ...):
useful to debug a run, noise when comparing experiments. The report stage gathers the figures that say
whether a data version is better into ``metrics/summary.json``, short names grouped so that one ``--keep``
pattern shows them all (docs/how-to/experiments.md)::

    surv.<round>   share of the round's items that evolved (metrics/evolve.json; round_1 -> r1)
    sel.n          items selected (metrics/select.json)
    sel.problems   distinct problems among them (metrics/select.json, select.same_problem*: null when off)
    sel.diff       mean judge difficulty of the selection, 0-100: the expected score under the judge's probabilities
                   (judge.probabilities), else its most likely score (data/selected)
    sel.icifd      mean IC-IFD of the selection (data/selected)
    ev.<task>      the fine-tuned model's main score per benchmark (metrics/eval.json)
    cost.usd       LLM spend of the stages' calls, summed over every metrics file (null: no prices set)
    wall.<stage>   wall seconds of each stage's last run (its metrics file's ``wall_s``: the process from start
                   to its metrics, model loading included; a stage DVC skipped keeps the figure of the run that
                   made its output), in pipeline order; ``wall.total`` their sum. The stages without a metrics
                   file (fetch_model, fetch_evolver, models) and the report itself are not timed here.

The figures come from the version's metrics folder and selection, as the report stage's
:class:`~evolforge.steps.common.layout.Layout` gives them::

    >>> sorted(headline(Layout()))
    ['cost', 'ev', 'sel', 'surv', 'wall']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from evolforge.io.records import TABLE
from evolforge.steps.common.layout import Layout

# the score each benchmark is known by (its paper's headline metric), as metrics/eval.json names it
MAIN_SCORE = {"ifeval": "prompt_level_strict_acc", "gsm8k": "exact_match_strict", "math": "exact_match",
              "humaneval": "pass@1", "mbpp": "pass@1"}
KEEP = r"Experiment|(surv|sel|ev|cost)\..*|wall\.total"  # the `dvc exp show --keep` pattern of these columns
# stage -> its metrics file (relative to metrics/), in pipeline order; the evolve rounds are found by glob
STAGE_METRICS = {
    "seed": "seed.json", "optimize": "optimize.json", "evolve": "evolve/*.json", "respond": "respond.json",
    "autoif_constraints": "autoif/constraints.json", "autoif_verify": "autoif/verify.json",
    "autoif_respond": "autoif/respond.json", "pick_scenario": "pool.json", "dedup": "dedup.json",
    "decontaminate": "decontaminate.json", "judge": "judge.json", "score": "score.json", "diversity": "diversity.json",
    "verify": "verify.json", "select": "select.json", "finetune": "train.json", "evaluate_base": "eval_base.json",
    "evaluate": "eval.json", "compare": "compare.json",
}


def _json(path: Path | None) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def _short_round(name: str) -> str:
    """``round_1`` -> ``r1``: a column name short enough for a 160-column table."""
    tail = name.rsplit("_", 1)[-1]
    return f"r{tail}" if name.startswith("round_") and tail.isdigit() else name


def _costs(value: Any) -> Iterator[float]:
    """Every ``llm.<role>.cost`` below ``value`` (the LLM stats each LLM stage writes)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "cost" and isinstance(inner, (int, float)):
                yield float(inner)
            else:
                yield from _costs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _costs(inner)


def _selection(selected: Path | None) -> dict[str, float | None]:
    path = selected / TABLE if selected is not None else None
    # each figure's columns, the first with a value wins: the most likely score is one of 101 round numbers that a
    # small judge gives most items alike (85 for every selected item of one run), its expectation tells them apart
    cols = {"diff": ("difficulty_expected", "difficulty_score"), "icifd": ("ic_ifd",)}
    if path is None or not path.exists():
        return dict.fromkeys(cols)
    names = pl.read_parquet_schema(path)
    table = pl.read_parquet(path, columns=[c for group in cols.values() for c in group if c in names])
    present = {short: [c for c in group if c in table.columns and table[c].null_count() < table.height]
               for short, group in cols.items()}
    return {short: round(float(table[found[0]].mean()), 4) if found else None for short, found in present.items()}


def _dropped_rounds(metrics: Path) -> set[Path]:
    """The files of ``metrics/evolve/`` whose round ``metrics/evolve.json`` does not list: left by a run of more
    rounds (DVC does not delete what a stage dropped from ``evolve.rounds`` wrote), so no figure of this version."""
    listed = _json(metrics / "evolve.json")
    if not isinstance(listed, dict):
        return set()
    return {path for path in (metrics / "evolve").glob("*.json") if path.stem not in listed}


def stage_metric_files(metrics: Path | None) -> Iterator[tuple[str, Path]]:
    """(stage, its metrics file) of every stage that wrote one in the folder ``metrics``, in pipeline order; an
    evolve round is ``evolve@<round>``, for the rounds ``metrics/evolve.json`` lists."""
    if metrics is None:
        return
    dropped = _dropped_rounds(metrics)
    for stage, pattern in STAGE_METRICS.items():
        for path in sorted(set(metrics.glob(pattern)) - dropped):
            if path.is_file():
                yield (f"{stage}@{path.stem}" if "*" in pattern else stage), path


def stage_wall_s(metrics: Path | None) -> dict[str, float]:
    """{stage: wall seconds} of the stages whose metrics file (:func:`stage_metric_files`) records ``wall_s``
    (core/stage.py). ``total``: their sum."""
    out: dict[str, float] = {}
    for stage, path in stage_metric_files(metrics):
        value = (_json(path) or {}).get("wall_s")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[stage] = float(value)
    if out:
        out["total"] = round(sum(out.values()), 1)
    return out


def headline(layout: Layout) -> dict[str, dict[str, Any]]:
    """The headline figures of the version whose artifacts ``layout`` gives (missing ones are null, never
    invented)."""
    metrics = layout.metrics_dir

    def metric(name: str) -> Any:
        return _json(metrics / name if metrics is not None else None)

    evolve = metric("evolve.json") or {}
    survival = {_short_round(name): (round(r["evolved"] / r["in"], 4) if r.get("in") else None)
                for name, r in evolve.items() if name != "total" and isinstance(r, dict) and "evolved" in r}
    select = metric("select.json") or {}
    tuned = (metric("eval.json") or {}).get("finetuned") or {}
    scores = {task: tuned.get(f"{task}/{key}") for task, key in MAIN_SCORE.items() if f"{task}/{key}" in tuned}
    files = sorted(set(metrics.rglob("*.json")) - _dropped_rounds(metrics)) if metrics is not None else []
    costs = [c for path in files if path.name != "summary.json" for c in _costs(_json(path))]
    selection = _selection(layout.selected)
    if selection["icifd"] is None:  # no selection here (a fresh clone): the select stage's own figure
        selection["icifd"] = select.get("selected_mean_ic_ifd")
    return {"surv": survival, "sel": {"n": select.get("selected"), "problems": select.get("distinct_problems_selected"),
                                      **selection}, "ev": scores,
            "cost": {"usd": round(sum(costs), 4) if costs else None}, "wall": stage_wall_s(metrics)}
