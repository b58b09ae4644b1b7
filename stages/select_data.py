"""select stage: choose the training set from the scored, judged items and export it for SFT.
(The script is not called select.py: Python puts stages/ first on sys.path, and that name would
shadow the standard library's select module.)

Reads:  data/responses/, data/judged/, data/scores/, data/diversity/ (MND), params.yaml `select`
Writes: data/selected/items.parquet (lineage + text + every metric), train.jsonl (TRL conversational
        prompt/completion), train_alpaca.json (Alpaca), meta.json, README.md + data/train-*.parquet (a Hugging
        Face dataset card and a `datasets`-loadable copy); metrics/select.json
"""

import argparse
import dataclasses

from evolforge.core import validation
from evolforge.core.params import load_params, load_section
from evolforge.core.records import read_table, write_json, write_output
from evolforge.build.card import write_card
from evolforge.build.selection import join_metrics, select_items, to_alpaca, to_trl
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--responses", default="data/responses")
    ap.add_argument("--judged", default="data/judged")
    ap.add_argument("--scores", default="data/scores")
    ap.add_argument("--diversity", default="data/diversity")
    ap.add_argument("--out", default="data/selected")
    ap.add_argument("--metrics", default="metrics/select.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "select")
    table = join_metrics(read_table(args.responses), {args.judged: read_table(args.judged), args.scores: read_table(args.scores),
                                                      args.diversity: read_table(args.diversity)})

    chosen, summary = select_items(table, cfg.metric, cfg.top_fraction, cfg.threshold, cfg.ifd_filter, cfg.rounds, cfg.seed)
    if chosen.height == 0:
        raise SystemExit(f"select: no item passed metric={summary['metric']} with the given fraction/threshold; nothing to train on")
    validation.check(chosen, validation.non_empty_text(["instruction", "output"]) + validation.unique("id"), args.out)
    write_output(args.out, chosen, meta={"params": dataclasses.asdict(cfg)}, extra={"train.jsonl": to_trl(chosen), "train_alpaca.json": to_alpaca(chosen)})
    write_card(args.out, ".", params)
    write_json(args.metrics, summary)
    print(f"select: {summary['selected']} of {summary['items']} items by {summary['metric']}")


if __name__ == "__main__":
    run_stage(main)
