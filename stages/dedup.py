"""dedup stage: mark near-duplicate items (MinHash LSH over normalised instruction + input), before judging.

Reads:  data/pool/ (the scenario's items: every answered round, and the seeds when respond.include_seed), params.yaml `dedup`
        (threshold, shingle_size, num_perm, seed), `data.chunk_rows`
Writes: data/dedup/items.parquet (every item, plus duplicate_of = the id of the kept item it duplicates,
        duplicate_similarity = exact Jaccard, dedup_reason = exact_duplicate | near_duplicate), meta.json;
        metrics/dedup.json (removed per round, exact vs near, peak_rss_mib)
Nothing is dropped here: decontaminate writes data/clean/ with the kept items and the removed ones.
The table is read and written data.chunk_rows rows at a time (docs/scale.md): the same output for any value.
"""

import argparse
import tempfile
from pathlib import Path

from evolforge.steps.dedup_stream import ANSWERS, dedup_chunks
from evolforge.steps.selection import guard_reason
from evolforge.core import validation
from evolforge.core.params import load_params, load_section
from evolforge.core.records import TABLE, write_json
from evolforge.core.stream import check_chunks, iter_chunks, peak_rss_mib, table_file, table_schema, write_output_chunks
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, rows = load_section(params, "dedup"), load_section(params, "data").chunk_rows
    source = table_file(args.items)
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), rows)
    Path(args.out).absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dedup-work-", dir=Path(args.out).absolute().parent) as work:
        # a usable item (one selection could take) wins its cluster over an unusable twin
        chunks, metrics = dedup_chunks(lambda columns: iter_chunks(source, rows, columns),
                                       lambda chunk: guard_reason(chunk).is_null().to_list(), Path(work), cfg, rows)
        schema = {**table_schema(source), **ANSWERS}
        write_output_chunks(args.out, {TABLE: (schema, chunks)}, meta={"params": vars(cfg)})
    metrics["peak_rss_mib"] = peak_rss_mib()
    write_json(args.metrics, metrics)
    print(f"dedup: {metrics['removed']} of {metrics['items']} items are near-duplicates "
          f"({metrics['removed_exact']} exact); per round {metrics['removed_per_round']}; peak RSS {metrics['peak_rss_mib']} MiB")


if __name__ == "__main__":
    run_stage(main)
