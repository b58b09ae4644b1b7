"""dedup stage: mark near-duplicate items (MinHash LSH over normalised instruction + input), before judging.

Reads:  data/pool/ (the scenario's items: every answered round, and the seeds when respond.include_seed), params.yaml `dedup`
        (threshold, shingle_size, num_perm, seed)
Writes: data/dedup/items.parquet (every item, plus duplicate_of = the id of the kept item it duplicates,
        duplicate_similarity = exact Jaccard, dedup_reason = exact_duplicate | near_duplicate), meta.json;
        metrics/dedup.json (removed per round, exact vs near)
Nothing is dropped here: decontaminate writes data/clean/ with the kept items and the removed ones.
"""

import argparse

from evolforge.steps.dedup import dedup_table
from evolforge.steps.selection import guard_reason
from evolforge.core import validation
from evolforge.core.params import load_params, load_section
from evolforge.core.records import read_table, write_json, write_output
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    cfg = load_section(load_params(args.params), "dedup")
    items = read_table(args.items)
    validation.check(items, validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), args.items)
    # a usable item (one selection could take) wins its cluster over an unusable twin
    usable = guard_reason(items).is_null().to_list()
    table, metrics = dedup_table(items, usable, cfg)
    write_output(args.out, table, meta={"params": vars(cfg)})
    write_json(args.metrics, metrics)
    print(f"dedup: {metrics['removed']} of {metrics['items']} items are near-duplicates "
          f"({metrics['removed_exact']} exact); per round {metrics['removed_per_round']}")


if __name__ == "__main__":
    run_stage(main)
