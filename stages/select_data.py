"""select stage: choose the training set from the clean, scored, judged items and export it for SFT.
(The script is not called select.py: Python puts stages/ first on sys.path, and that name would
shadow the standard library's select module.)

Reads:  data/clean/ (deduplicated, decontaminated), data/judged/, data/scores/, data/diversity/ (items.parquet
        with id, mnd; embeddings.npy for select.diversity_threshold), params.yaml `select` (metric,
        top_fraction, threshold, ifd_filter, rounds, seed, min_loss_instruction, min_mnd, diversity_threshold)
        and `card`; data/seed, data/evolved, models/identity.json for the dataset card
Writes: data/selected/items.parquet (lineage + text + every metric), excluded.parquet (id, round,
        skip_reason for every item not chosen: a guard such as empty_response, a floor, the budget),
        train.jsonl (TRL conversational prompt/completion), train_alpaca.json (Alpaca), meta.json,
        README.md + data/train-*.parquet (a Hugging Face dataset card and a `datasets`-loadable copy);
        metrics/select.json (items removed per filter, diversity of the selected set)
"""

import argparse
import dataclasses

from evolforge.steps.card import write_card
from evolforge.steps.selection import join_metrics, load_embeddings, select_items, to_alpaca, to_trl
from evolforge.core import validation
from evolforge.core.errors import run_stage
from evolforge.core.params import load_params, load_section
from evolforge.core.records import read_table, write_json, write_output
from evolforge.core.stream import peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--judged", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--diversity", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "select")
    items = read_table(args.items)
    validation.check(items, validation.item_columns(["id", "round", "instruction", "input", "output"])
                     + validation.unique("id"), args.items)
    per_item = {path: read_table(path) for path in (args.judged, args.scores, args.diversity)}
    # the columns this selection reads, from the table that holds them: present, numbers
    numbers = {args.scores: [cfg.metric] if cfg.metric in ("ifd", "ic_ifd") else [],
               args.judged: [cfg.metric] if cfg.metric in ("difficulty_score", "difficulty_expected") else [],
               args.diversity: ["mnd"] if cfg.min_mnd is not None else []}
    numbers[args.scores] += ["ifd"] if cfg.ifd_filter else []
    numbers[args.scores] += ["loss_instruction"] if cfg.min_loss_instruction is not None else []
    for path, other in per_item.items():
        validation.check(other, validation.item_columns(["id"]) + validation.unique("id")
                         + validation.number_columns(numbers[path]), path)
    table = join_metrics(items, per_item)
    chosen, summary, excluded = select_items(table, cfg, embeddings=load_embeddings(args.diversity))
    if chosen.height == 0:
        counts = ", ".join(f"{s['filter']} -{s['removed']}" for s in summary["filters"] if s["removed"])
        raise SystemExit(f"select: nothing to train on: filter '{summary['emptied_by']}' removed the last items "
                         f"(of {table.height}: {counts}); see params.yaml select and metrics of the earlier stages")
    validation.check(chosen, validation.non_empty_text(["instruction", "output"]) + validation.unique("id"), args.out)
    write_output(args.out, chosen, meta={"params": dataclasses.asdict(cfg)}, tables={"excluded.parquet": excluded},
                 extra={"train.jsonl": to_trl(chosen), "train_alpaca.json": to_alpaca(chosen)},
                 finish=lambda folder: write_card(folder, ".", params))  # the card inside the one atomic write
    write_json(args.metrics, {**summary, "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    print(f"select: {summary['selected']} of {summary['items']} items by {summary['metric']}; "
          f"removed per filter {summary['removed_by_filter']}")


if __name__ == "__main__":
    run_stage(main)
