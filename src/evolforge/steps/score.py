"""The score stage: IFD and IC-IFD losses of every item from roles.scorer (:mod:`evolforge.score.ifd`), stored
at the precision of :mod:`evolforge.score.precision` (docs/scoring.md): losses at 4 significant digits, IFD /
IC-IFD recomputed from them and the means at 6, so another CPU's last-bit differences do not change the hashes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.core import validation
from evolforge.core.params import load_role, load_section
from evolforge.core.records import read_table
from evolforge.core.stage import Outputs
from evolforge.llm.identity import recorded_identity
from evolforge.score.histogram import histogram
from evolforge.score.ifd import ifd_scores, load_scorer
from evolforge.score.precision import RATIO_DIGITS, significant, stored_scores

MEANS = ("loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd")  # in the metrics


def run(items: str | Path, params: dict[str, Any]) -> Outputs:
    """Scores (id, round, losses in nats, ifd, ic_ifd, token counts) of the items of ``items``; the scorer
    runs in-process (hf): scoring needs logits."""
    cfg = load_section(params, "score")
    role = load_role(params, "scorer")
    if role.backend != "hf":
        raise SystemExit("params.yaml roles.scorer.backend: scoring needs logits, so it runs in-process (hf)")
    table = read_table(items)
    validation.check(table, validation.item_columns(["id", "round", "instruction", "input", "output"]) + validation.unique("id"), items)
    model, tokenizer = load_scorer(role.model, role.revision, dtype=role.dtype, device=role.device)
    scores = ifd_scores(model, tokenizer, table["instruction"].to_list(), table["input"].to_list(), table["output"].to_list(),
                        **dataclasses.asdict(cfg), batch_size=role.batch_size)
    table = pl.concat([table.select("id", "round"), stored_scores(scores)], how="horizontal")

    def mean(col: str) -> float | None:
        s = table[col].drop_nulls().drop_nans()
        return significant(float(s.mean()), RATIO_DIGITS) if s.len() else None

    metrics = {"items": table.height, "template": cfg.template, "scorer": role.model,
               "null_scores": int(table["ic_ifd"].is_null().sum()), **{f"mean_{c}": mean(c) for c in MEANS},
               "share_ifd_above_1": float((table["ifd"] > 1).sum() / max(1, table["ifd"].drop_nulls().len()))}
    return Outputs(metrics, f"score: {table.height} items, mean IFD {metrics['mean_ifd']}, mean IC-IFD {metrics['mean_ic_ifd']}",
                   table=table, meta={"scorer": role.model, "scorer_identity": recorded_identity(role), "params": dataclasses.asdict(cfg)},
                   checks=validation.unique("id"), plots={f"{c}_hist.json": histogram(table[c].to_list()) for c in ("ifd", "ic_ifd")},
                   peak_rss=True)
