"""Read one dataset version's artifacts into plain Python data for the report page.

A *version* is a folder laid out as the pipeline writes it (the repository root, or a copy of an
experiment's outputs); where each artifact lies in it is the report stage's
:class:`~evolforge.steps.common.layout.Layout`, the paths its command in dvc.yaml gives: the seed, the evolved
rounds (items.parquet + meta.json), the responses, the pool, dedup's and decontaminate's outputs, the judged,
scored and selected items, the models stage's identity file, the score stage's metrics, and the metrics folder,
where each stage's metrics file is known by the name its stage's command gives it (``select.json``,
``plots/optimize.json``, ``train_live/``, ...). Every artifact is optional: what is missing is reported as missing,
never invented, so the page of a half-built version still opens.
"""

from __future__ import annotations

import csv
import hashlib
import json
import heapq
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from evolforge.io.records import EVOLVED, TABLE
from evolforge.report.spend import spend
from evolforge.report.summary import headline
from evolforge.score.histogram import histogram
from evolforge.steps.common.difficulty import LEVELS
from evolforge.steps.common.verification import COLUMNS as VERIFY_COLUMNS, evidence_line
from evolforge.steps.common.funnel import evolved_rounds, funnel, json_at, provenance, table_at
from evolforge.steps.common.layout import Layout

SAMPLE_CHAINS = 20
PAIRS_PER_ROUND = 4  # surviving rewrites shown beside their parents, per round
EXAMPLES = 5  # top and bottom selected examples shown
# the judge's 0-100 score columns (the judged items), the expected one first: with judge.probabilities it tells apart
# items that the most likely answer lumps together; without, it is null and the most likely score is all there is
SCORE_FIELDS = {"difficulty_expected": "expected score", "difficulty_score": "most likely score"}


def _digest(key: str) -> str:
    """A lineage's place in a sample: stable across versions built from the same seeds."""
    return hashlib.sha256(key.encode()).hexdigest()


def chains(layout: Layout, n: int = SAMPLE_CHAINS) -> list[list[dict]]:
    """``n`` seeds' chains through the rounds (each round's attempt: method, status, failure reason).

    Seeds are picked by a hash of their id (stable across versions built from the same seeds), preferring
    those whose chain reaches the last round.
    """
    seed = table_at(layout.seed)
    rounds = [pl.read_parquet(p / TABLE) for p in evolved_rounds(layout.evolved)]
    if seed is None or not rounds:
        return []
    cols = ["id", "root_id", "parent_id", "round", "method", "status", "failure_reason", "instruction"]
    rows = pl.concat([seed.select(cols)] + [t.select(cols) for t in rounds], how="vertical_relaxed")
    for folder, names in ((layout.judged, ["difficulty_level"]), (layout.scores, ["ifd", "ic_ifd"])):
        t = table_at(folder)
        if t is not None:
            rows = rows.join(t.select(["id"] + [c for c in names if c in t.columns]), on="id", how="left")
    selected = table_at(layout.selected)
    chosen = set(selected["id"].to_list()) if selected is not None else set()
    last = max(int(t["round"].max()) for t in rounds if t.height) if any(t.height for t in rounds) else 0
    by_root: dict[str, list[dict]] = {}
    for r in rows.sort("round").to_dicts():
        r["selected"] = r["id"] in chosen
        by_root.setdefault(r["root_id"] or r["id"], []).append(r)
    def key(root_id: str) -> tuple:
        reaches = any(step["round"] == last for step in by_root[root_id])
        return (not reaches, _digest(root_id))
    return [by_root[k] for k in sorted(by_root, key=key)[:n]]


def judge_levels(layout: Layout) -> list[dict]:
    """Level counts and shares per round (the plot data of the judge stage, recomputed from the judged items)."""
    judged = table_at(layout.judged)
    if judged is None:
        return json_at(_in_metrics(layout, "plots/difficulty_levels.json")) or []
    out = []
    for (r,), part in sorted(judged.group_by(["round"]), key=lambda kv: kv[0][0]):
        for level in LEVELS + [None]:
            count = int(part["difficulty_level"].is_null().sum() if level is None
                        else (part["difficulty_level"] == level).sum())
            if level is None and not count:
                continue
            out.append({"round": int(r), "level": level or "unparsed", "count": count,
                        "share": round(count / part.height, 4)})
    return out


def _in_metrics(layout: Layout, name: str) -> Path | None:
    """The file ``name`` of the metrics folder (None when the layout has none)."""
    return layout.metrics_dir / name if layout.metrics_dir is not None else None


def _judged_table(layout: Layout) -> Path | None:
    path = layout.judged / TABLE if layout.judged is not None else None
    return path if path is not None and path.exists() else None


def judge_score_fields(layout: Layout) -> list[str]:
    """The judge's score columns that the judged items hold values of (``SCORE_FIELDS`` order: expected first)."""
    path = _judged_table(layout)
    if path is None:
        return []
    names = pl.read_parquet_schema(path)
    present = [f for f in SCORE_FIELDS if f in names]
    counts = pl.scan_parquet(path).select(pl.col(f).count() for f in present).collect().row(0) if present else ()
    return [f for f, n in zip(present, counts) if n]


def difficulty_distribution(layout: Layout) -> list[dict]:
    """Per judge score column and round: items judged, scores parsed, and the scores' mean, min, quartiles and max
    (0-100; quartiles interpolated linearly between the two nearest scores, as numpy's default)."""
    path = _judged_table(layout)
    rows = []
    for field in judge_score_fields(layout):
        score = pl.col(field)
        stats = (pl.scan_parquet(path).group_by("round")
                 .agg(judged=pl.len(), scored=score.count(), mean=score.mean(), min=score.min(),
                      q1=score.quantile(0.25, "linear"), median=score.median(), q3=score.quantile(0.75, "linear"),
                      max=score.max())
                 .sort("round").collect())
        rows += [{"score": field, **r, "round": int(r["round"])} for r in stats.to_dicts()]
    return rows


def evolved_pairs(layout: Layout, n: int = PAIRS_PER_ROUND) -> list[dict]:
    """Per round, ``n`` surviving rewrites beside the instruction each rewrote (the seed's, or an earlier round's
    survivor), with the method and, where the item was judged, the judge's level and score of both.

    Picked by a hash of their seed's id, as :func:`chains` picks: the same lineages in every round, and in every
    version built from the same seeds. Only the picked rows, their parents and their judgements are read.
    """
    rounds = [p / TABLE for p in evolved_rounds(layout.evolved)]
    cols = ["id", "root_id", "parent_id", "round", "method", "instruction", "input"]
    picked = []
    for path in rounds:
        survivors = pl.scan_parquet(path).filter(pl.col("status") == EVOLVED).select("id", "root_id").collect()
        keys = heapq.nsmallest(n, zip(survivors["root_id"], survivors["id"]),
                               key=lambda k: (_digest(k[0] or k[1]), k[1]))
        order = {item_id: i for i, (_, item_id) in enumerate(keys)}
        part = pl.scan_parquet(path).filter(pl.col("id").is_in(list(order))).select(cols).collect()
        picked += sorted(part.to_dicts(), key=lambda r: order[r["id"]])
    if not picked:
        return []
    parent_ids = list({r["parent_id"] for r in picked})
    seed = [layout.seed / TABLE] if layout.seed is not None else []
    sources = [p for p in seed + rounds if p.exists()]
    parents = {r["id"]: r for path in sources for r in pl.scan_parquet(path).filter(pl.col("id").is_in(parent_ids))
               .select(cols).collect().to_dicts()}
    judged = {}
    fields = judge_score_fields(layout)[:1]  # the score the distribution leads with
    if _judged_table(layout) is not None:
        wanted = [r["id"] for r in picked] + parent_ids
        table = (pl.scan_parquet(_judged_table(layout)).filter(pl.col("id").is_in(wanted))
                 .select(["id", "difficulty_level"] + fields).collect())
        judged = {r["id"]: {"level": r["difficulty_level"], "score": r[fields[0]] if fields else None}
                  for r in table.to_dicts()}
    none = {"level": None, "score": None}
    out = []
    for r in picked:
        parent = parents.get(r["parent_id"])
        if parent is not None:
            parent = {**parent, **judged.get(parent["id"], none)}
        out.append({**r, **judged.get(r["id"], none), "score_field": fields[0] if fields else None, "parent": parent})
    return out


def _on_bins(bins: list[dict], values: list[float | None]) -> list[dict]:
    """Counts of ``values`` over the same bins (``histogram`` output), so two sets' bars line up."""
    if not bins:
        return []
    edges = np.asarray([b["bin_low"] for b in bins] + [bins[-1]["bin_high"]], dtype=float)
    x = np.asarray([v for v in values if v is not None], dtype=float)
    counts, _ = np.histogram(x[np.isfinite(x)], bins=edges)
    return [{**b, "count": int(c)} for b, c in zip(bins, counts)]


def score_histograms(layout: Layout) -> dict[str, list[dict]]:
    """IFD, IC-IFD and MND histograms of the scored pool, and of the selection when there is one."""
    scores, selected = table_at(layout.scores), table_at(layout.selected)
    out = {}
    for col in ("ifd", "ic_ifd", "mnd"):
        if scores is not None and col in scores.columns:
            bins = histogram(scores[col].to_list())
            out[col] = [{**b, "set": "pool"} for b in bins]
            if selected is not None and col in selected.columns:  # on the pool's bins: bars of one width
                out[col] += [{**b, "set": "selected"} for b in _on_bins(bins, selected[col].to_list())]
        else:
            plot = json_at(_in_metrics(layout, f"plots/{col}_hist.json"))
            if plot:
                out[col] = [{**b, "set": "pool"} for b in plot]
    return out


def examples(layout: Layout, metric: str | None) -> dict[str, list[dict]]:
    """The selected items with the highest and the lowest value of the selection metric."""
    selected = table_at(layout.selected)
    if selected is None or not metric or metric not in selected.columns:
        return {}
    ranked = selected.filter(pl.col(metric).is_not_null()).sort([metric, "id"], descending=[True, False])
    cols = [c
            for c in ("id", "round", "instruction", "input", "output", "ifd",
                      "ic_ifd", "difficulty_level") if c in ranked.columns]
    return {"top": ranked.head(EXAMPLES).select(cols).to_dicts(),
            "bottom": ranked.tail(EXAMPLES).reverse().select(cols).to_dicts()}


def answer_checks(layout: Layout) -> list[dict]:
    """The answered items that have an answer check (the responses): round, instruction, the check's kind,
    whether the answer passed and why not, and whether the item was selected."""
    responses = table_at(layout.responses)
    if responses is None or "answer_check" not in responses.columns:
        return []
    checked = responses.filter(pl.col("answer_check").is_not_null())
    selected = table_at(layout.selected)
    chosen = set(selected["id"].to_list()) if selected is not None else set()
    return [{"id": r["id"], "round": r["round"], "instruction": r["instruction"], "output": r["output"],
             "kind": json.loads(r["answer_check"]).get("kind"),
             "passed": r["answer_check_passed"], "detail": r["answer_check_detail"], "selected": r["id"] in chosen}
            for r in checked.to_dicts()]


def verifications(layout: Layout) -> dict[str, Any]:
    """The verify stage's verdicts: counts per method and verdict over the pool (its metrics, ``verify.json``)
    and, per selected item, how it was checked, the verdict, the confidence and a reading of the evidence."""
    selected = table_at(layout.selected, ["id", "round", "instruction", "output", *VERIFY_COLUMNS])
    rows = []
    if selected is not None and "verify_verdict" in selected.columns:
        rows = [{"id": r["id"], "round": r["round"], "instruction": r["instruction"], "output": r["output"],
                 "method": r["verify_method"], "verdict": r["verify_verdict"], "confidence": r["verify_confidence"],
                 "evidence": evidence_line(r["verify_method"], r["verify_evidence"])}
                for r in selected.iter_rows(named=True)]
    return {"metrics": json_at(_in_metrics(layout, "verify.json")), "selected": rows}


def train_curve(layout: Layout) -> list[dict]:
    """Loss per step: DVCLive's file when training logged live, else the finetune stage's loss curve."""
    live = _in_metrics(layout, "train_live/plots/metrics/loss.tsv")
    if live is not None and live.exists():
        with open(live, encoding="utf-8") as fh:
            return [{"step": int(r["step"]), "loss": float(r["loss"])} for r in csv.DictReader(fh, delimiter="\t")]
    return json_at(_in_metrics(layout, "plots/train_loss.json")) or []


def eval_rows(metrics: dict) -> dict | None:
    """Base (``eval_base.json``, stage evaluate_base) and fine-tuned (``eval.json``, stage evaluate) side by side."""
    base, tuned = metrics.get("eval_base") or {}, metrics.get("eval") or {}
    if not base and not tuned:
        return None
    return {**base, **tuned, "skipped": {**(base.get("skipped") or {}), **(tuned.get("skipped") or {})}}


def _declared(entry: str | dict) -> tuple[str, bool]:
    """A dvc.yaml output entry's path (a ``foreach`` stage's up to its first ``${``: the folder of its items) and
    whether DVC caches it."""
    path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
    return path.split("${", 1)[0].rstrip("/"), (options or {}).get("cache", True)


def stale_metrics(dvc_yaml: Path | None) -> list[str]:
    """Warnings for metrics present beside an absent output: a partly built workspace showing committed numbers.

    A stage's metrics and plots (its ``metrics``, ``plots`` and uncached ``outs``) describe its cached outputs,
    as the workspace's ``dvc_yaml`` declares them; a metric whose output is absent was not made by this
    workspace's data (a committed file from an earlier run) and mixes with what was built here. Only a pipeline
    workspace is checked (None: no check): ``report --compare`` copies out of a git revision or experiment only the
    files the page reads, metrics of one run by construction, and the report stage runs after the stages it
    reads."""
    if dvc_yaml is None or not dvc_yaml.is_file():
        return []
    root = dvc_yaml.parent
    stale: dict[str, list[str]] = {}
    for stage in (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("stages") or {}).values():
        stage = stage.get("do", stage)
        declared = [(_declared(entry), key) for key in ("outs", "metrics", "plots") for entry in stage.get(key) or []]
        outputs = [path for (path, cached), key in declared if path and key == "outs" and cached]
        metrics = [path for (path, cached), key in declared if path and not (key == "outs" and cached)]
        missing = [path for path in outputs if not (root / path).exists()]
        present = [path for path in metrics if (root / path).exists()]
        if missing and present:
            stale.setdefault(", ".join(missing), []).extend(present)
    return [f"{', '.join(metrics)} present but {output} is not: these numbers come from an earlier run (the "
            f"committed metrics), not from this workspace's data; run `dvc repro` (or `dvc pull`) to rebuild them"
            for output, metrics in sorted(stale.items())]


def collect(layout: Layout, dvc_yaml: Path | None = None) -> dict[str, Any]:
    """Everything the report shows about the version whose artifacts ``layout`` gives (with the stale metrics of
    the workspace of ``dvc_yaml``, when given: :func:`stale_metrics`)."""
    metrics_dir = layout.metrics_dir
    metrics = {p.stem: json_at(p) for p in sorted(metrics_dir.glob("*.json"))} if metrics_dir is not None else {}
    select = metrics.get("select") or {}
    return {
        "root": str(layout.root),
        "headline": headline(layout),  # what the summary metrics hold (survival per round, selection, scores, cost)
        "funnel": funnel(layout),
        "chains": chains(layout),
        "levels": judge_levels(layout),
        "difficulty": difficulty_distribution(layout),  # the judge's scores per round: mean, quartiles
        # harder per round (the SLM paper's measure: share at the top two levels, mean expected score; evolve_report's)
        "harder": ((metrics.get("evolve") or {}).get("difficulty") or {}).get("rounds") or {},
        "pairs": evolved_pairs(layout),  # surviving rewrites beside their parents
        "histograms": score_histograms(layout),
        "examples": examples(layout, select.get("metric")),
        "selection_metric": select.get("metric"),
        "evolve_failures": json_at(_in_metrics(layout, "plots/evolve_failures.json")) or [],
        "optimize": ((metrics.get("optimize") or {}).get("per_step")
                     or json_at(_in_metrics(layout, "plots/optimize.json")) or []),
        "train_curve": train_curve(layout),
        "answer_checks": answer_checks(layout),
        "verification": verifications(layout),  # the verify stage's verdicts, per method and per selected item
        "optimize_metrics": metrics.get("optimize") or {},
        "eval": eval_rows(metrics),
        "train": metrics.get("train"),
        "provenance": provenance(layout),
        "identities": json_at(layout.identities),
        "spend": spend(layout),  # tokens and cost per role, per surviving and per selected item
        "metrics": metrics,
        # and what a stage warned about (optimize: a step none of whose candidates parsed)
        "warnings": stale_metrics(dvc_yaml) + [f"optimize: {w}" for w in (metrics.get("optimize") or {}).get("warnings")
                                               or []],
    }
