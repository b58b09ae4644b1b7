"""The select stage: the clean items joined with their judged, scored and diversity tables, chosen by
``params.yaml select`` (:func:`evolforge.steps.select.selection.select_items`), exported for SFT (TRL's
conversational prompt/completion, Alpaca) with the dataset card (:mod:`evolforge.steps.select.card`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from evolforge.io import validation
from evolforge.config.loader import load_section
from evolforge.io.records import read_table
from evolforge.core.stage import Outputs
from evolforge.steps.select.card import write_card
from evolforge.steps.select.selection import join_metrics, load_embeddings, select_items, to_alpaca, to_trl


def run(items: str, judged: str, scores: str, diversity: str, params: dict[str, Any]) -> Outputs:
    """The select stage: the items of ``items`` joined with the per-item tables of ``judged``, ``scores`` and
    ``diversity``, selected by ``params.yaml select``, exported for SFT, with the dataset card."""
    cfg = load_section(params, "select")
    table = read_table(items)
    validation.check(table, validation.item_columns(["id", "round", "instruction", "input", "output"])
                     + validation.unique("id"), items)
    per_item = {path: read_table(path) for path in (judged, scores, diversity)}
    # the columns this selection reads, from the table that holds them: present, numbers
    numbers = {scores: [cfg.metric] if cfg.metric in ("ifd", "ic_ifd") else [],
               judged: [cfg.metric] if cfg.metric in ("difficulty_score", "difficulty_expected") else [],
               diversity: ["mnd"] if cfg.min_mnd is not None else []}
    numbers[scores] += ["ifd"] if cfg.ifd_filter else []
    numbers[scores] += ["loss_instruction"] if cfg.min_loss_instruction is not None else []
    for path, other in per_item.items():
        validation.check(other, validation.item_columns(["id"]) + validation.unique("id")
                         + validation.number_columns(numbers[path]), path)
    table = join_metrics(table, per_item)
    chosen, summary, excluded = select_items(table, cfg, embeddings=load_embeddings(diversity))
    if chosen.height == 0:
        counts = ", ".join(f"{s['filter']} -{s['removed']}" for s in summary["filters"] if s["removed"])
        raise SystemExit(f"select: nothing to train on: filter '{summary['emptied_by']}' removed the last items "
                         f"(of {table.height}: {counts}); see params.yaml select and metrics of the earlier stages")
    return Outputs(summary, f"select: {summary['selected']} of {summary['items']} items by {summary['metric']}; "
                            f"removed per filter {summary['removed_by_filter']}",
                   table=chosen, meta={"params": dataclasses.asdict(cfg)}, tables={"excluded.parquet": excluded},
                   extra={"train.jsonl": to_trl(chosen), "train_alpaca.json": to_alpaca(chosen)},
                   finish=lambda folder: write_card(folder, ".", params),  # the card inside the one atomic write
                   checks=validation.non_empty_text(["instruction", "output"]) + validation.unique("id"), peak_rss=True)
