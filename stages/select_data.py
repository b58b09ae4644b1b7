"""select stage: choose the training set from the clean, scored, judged items and export it for SFT.
(The script is not called select.py: Python puts stages/ first on sys.path, and that name would
shadow the standard library's select module.)

Reads:  data/clean/ (deduplicated, decontaminated), data/judged/, data/scores/, data/diversity/ when it
        exists (items.parquet with id, mnd; embeddings.npy: needed by select.diversity_threshold),
        params.yaml `select` (metric, top_fraction, threshold, ifd_filter, rounds, seed,
        min_loss_instruction, min_mnd, diversity_threshold)
Writes: data/selected/items.parquet (lineage + text + every metric), excluded.parquet (id, round,
        skip_reason for every item not chosen: a guard such as empty_response, a floor, the budget),
        train.jsonl (TRL conversational prompt/completion), train_alpaca.json (Alpaca), meta.json;
        metrics/select.json (items removed per filter, diversity of the selected set)
"""

import argparse
import dataclasses
from pathlib import Path

from evolforge.build.selection import SelectConfig, load_embeddings, select_items, to_alpaca, to_trl
from evolforge.core import validation
from evolforge.core.params import load_params, typed_section
from evolforge.core.records import TABLE, read_table, write_json, write_output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", default="data/clean")
    ap.add_argument("--judged", default="data/judged")
    ap.add_argument("--scores", default="data/scores")
    ap.add_argument("--diversity", default="data/diversity")
    ap.add_argument("--out", default="data/selected")
    ap.add_argument("--metrics", default="metrics/select.json")
    args = ap.parse_args()

    cfg = typed_section(SelectConfig, load_params(args.params).get("select"), "select")
    items = read_table(args.items)
    others = [(args.judged, read_table(args.judged).drop("round")), (args.scores, read_table(args.scores).drop("round"))]
    embeddings = None
    if (Path(args.diversity) / TABLE).exists():
        diversity = read_table(args.diversity).drop("round", strict=False)
        # the diversity stage's MND (over the clean pool) replaces any older one in the scores
        others[1] = (args.scores, others[1][1].drop([c for c in diversity.columns if c != "id"], strict=False))
        others.append((args.diversity, diversity))
        embeddings = load_embeddings(args.diversity)
    elif cfg.diversity_threshold is not None:
        raise SystemExit(f"params.yaml select.diversity_threshold needs {args.diversity}/{TABLE} and embeddings.npy; "
                         "run the diversity stage")
    table = items
    for name, other in others:
        unmatched = items.join(other, on="id", how="anti").height
        if unmatched:
            raise SystemExit(f"{name}: {unmatched} items of {args.items} have no row; rerun that stage")
        table = table.join(other, on="id", how="left")

    chosen, summary, excluded = select_items(table, **dataclasses.asdict(cfg), embeddings=embeddings)
    if chosen.height == 0:
        counts = ", ".join(f"{s['filter']} -{s['removed']}" for s in summary["filters"] if s["removed"])
        raise SystemExit(f"select: nothing to train on: filter '{summary['emptied_by']}' removed the last items "
                         f"(of {table.height}: {counts}); see params.yaml select and metrics of the earlier stages")
    validation.check(chosen, validation.non_empty_text(["instruction", "output"]) + validation.unique("id"), args.out)
    write_output(args.out, chosen, meta={"params": dataclasses.asdict(cfg)}, tables={"excluded.parquet": excluded},
                 extra={"train.jsonl": to_trl(chosen), "train_alpaca.json": to_alpaca(chosen)})
    write_json(args.metrics, summary)
    print(f"select: {summary['selected']} of {summary['items']} items by {summary['metric']}; "
          f"removed per filter {summary['removed_by_filter']}")


if __name__ == "__main__":
    main()
