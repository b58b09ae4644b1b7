"""What one version's artifacts count, read from disk: the funnel per round (in, evolved, failed by reason,
answered, kept, judged, selected), the strategy each evolved round used, and the models and prompt templates of
each stage. The dataset card (:mod:`evolforge.steps.select.card`) and the report page (:mod:`evolforge.report.collect`)
both show them; every artifact is optional, so a half-built version reads as what it has. Where each artifact lies is
the reader's :class:`~evolforge.steps.common.layout.Layout`: the paths its stage's command in dvc.yaml gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.io.records import EVOLVED, META, SETTINGS, TABLE
from evolforge.steps.common.layout import Layout


def table_at(folder: Path | None, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The table of the artifact folder ``folder`` (only ``columns``, those of them it has, when given); None
    when it is not given or not there."""
    path = folder / TABLE if folder is not None else None
    if path is None or not path.exists():
        return None
    if columns is None:
        return pl.read_parquet(path)
    return pl.read_parquet(path, columns=[c for c in columns if c in pl.read_parquet_schema(path)])


def json_at(path: Path | None) -> Any:
    """A JSON file's content; None when it is not given or not there."""
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else None


def evolved_rounds(evolved: Path | None) -> list[Path]:
    """The round folders (with a table) of ``evolved``, the folder holding each round's output, in round order."""
    def index(p: Path) -> int:
        tail = p.name.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    if evolved is None:
        return []
    return sorted((p for p in evolved.glob("*/") if (p / TABLE).exists()), key=index)


def _reasons(table: pl.DataFrame) -> dict[str, int]:
    failed = table.filter(pl.col("failure_reason").is_not_null())
    return {r: n
            for r, n in sorted(failed.group_by("failure_reason").len().iter_rows(), key=lambda kv: (-kv[1], kv[0]))}


def _by_round(table: pl.DataFrame | None) -> dict[int, int]:
    if table is None or "round" not in table.columns:
        return {}
    return {int(r): int(n) for r, n in sorted(table.group_by("round").len().iter_rows())}


def _removed(layout: Layout) -> dict[int, dict[str, int]]:
    """Per round, the items dedup and decontaminate dropped, by reason (their ``removed.parquet``: dedup's
    ``dedup_reason``, exact_duplicate | near_duplicate; decontaminate's are "contaminated")."""
    parts = []
    for folder, reason in ((layout.dedup, pl.col("dedup_reason")), (layout.clean, pl.lit("contaminated"))):
        path = folder / "removed.parquet" if folder is not None else None
        if path is not None and path.exists():
            removed = pl.scan_parquet(path).select(pl.col("round").cast(pl.Int64),
                                                   reason.fill_null("removed").alias("reason"))
            parts.append(removed.collect())
    if not parts:
        return {}
    out: dict[int, dict[str, int]] = {}
    for (r,), part in pl.concat(parts).group_by(["round"]):
        counts = part.group_by("reason").len().iter_rows()
        out[int(r)] = dict(sorted(counts, key=lambda kv: (-kv[1], kv[0])))
    return out


def funnel(layout: Layout, selected: pl.DataFrame | None = None, removed: bool = True) -> list[dict]:
    """One row per round: in (the attempts), evolved, failed (by reason), survival (evolved / in), answered, clean
    (with the removed by reason: ``removed``, read from dedup's and decontaminate's ``removed.parquet``; the card
    shows no reasons and reads neither), judged, selected. ``selected`` is the selection when it is not yet in
    ``layout.selected`` (the card, written inside the select stage's atomic write, passes the rows it is about to
    publish)."""
    # the round column alone: the counts per round (8 bytes per item, not the texts)
    responses, clean = table_at(layout.pool, ["round"]), table_at(layout.clean, ["round"])
    judged = table_at(layout.judged, ["round"])
    selected = selected if selected is not None else table_at(layout.selected, ["round"])
    answered, judged_n, selected_n = _by_round(responses), _by_round(judged), _by_round(selected)
    kept = _by_round(clean) if clean is not None else {}
    dropped = _removed(layout) if clean is not None and removed else {}
    seed = table_at(layout.seed, ["id"])
    rows = []
    if seed is not None:
        rows.append({"round": 0, "in": seed.height, "evolved": None, "failed": None, "survival": None,
                     "failed_by_reason": {},
                     "answered": answered.get(0), "clean": kept.get(0, 0 if answered.get(0) is not None
                                                                    else None) if clean is not None else None,
                     "removed_by_reason": dropped.get(0, {}), "judged": judged_n.get(0), "selected": selected_n.get(0)})
    for path in evolved_rounds(layout.evolved):
        t = pl.read_parquet(path / TABLE, columns=["round", "status", "failure_reason"])
        r = int(t["round"][0]) if t.height else 0
        evolved = int((t["status"] == EVOLVED).sum())
        # survival: the share of the round's attempts that passed the elimination rules
        rows.append({"round": r, "in": t.height, "evolved": evolved, "failed": t.height - evolved,
                     "survival": round(evolved / t.height, 4) if t.height else None,
                     "failed_by_reason": _reasons(t), "answered": answered.get(r, 0),
                     "clean": kept.get(r, 0) if clean is not None else None, "removed_by_reason": dropped.get(r, {}),
                     "judged": judged_n.get(r, 0), "selected": selected_n.get(r, 0)})
    return rows


def round_strategies(layout: Layout) -> list[dict]:
    """Per evolved round (its ``meta.json``): the strategy asked for, the one used, and why they differ."""
    out = []
    for path in evolved_rounds(layout.evolved):
        meta = json_at(path / META) or {}
        used = (meta.get(SETTINGS) or {}).get("strategy")
        out.append({"round": meta.get("round", path.name), "requested": meta.get("requested_strategy") or used,
                    "used": used, "fallback": meta.get("fallback")})
    return out


def provenance(layout: Layout) -> list[dict]:
    """Models, their identities and the prompt template hashes, stage by stage (from each output's meta.json)."""
    rows = []
    stages = [(f"evolve {p.name}", p) for p in evolved_rounds(layout.evolved)] + [
        (name, getattr(layout, name)) for name in ("responses", "judged", "scores", "selected")]
    for stage, folder in stages:
        meta = json_at(folder / META if folder is not None else None)
        if meta is None:
            continue
        hashes = dict(meta.get("template_hashes") or {})
        if meta.get("template_hash"):
            hashes["respond/response.j2"] = meta["template_hash"]
        scorer = meta.get("scorer") if isinstance(meta.get("scorer"), dict) else None  # score: model_identity()
        model = meta.get("model") or (scorer or {}).get("name")
        identity = meta.get("model_identity") or scorer
        if stage == "scores" and not model:
            model = (json_at(layout.score_metrics) or {}).get("scorer")
        if not (model or identity or hashes):
            continue  # select and the like: no model, no prompt
        rows.append({"stage": stage, "model": model, "identity": identity, "template_hashes": hashes})
    return rows
