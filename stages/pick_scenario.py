"""pick_scenario stage: the answered pool that dedup/judge/score/select read, from the branch `scenario` names.

Reads:  params.yaml `autoif.scenario` (evol | autoif), `autoif.on_empty` (evol | fail);
        data/responses/ (evol) and data/autoif/responses/ (autoif)
Writes: data/pool/items.parquet (the chosen table, unchanged: streamed data.chunk_rows rows at a time),
        meta.json (scenario, source, fallback);
        metrics/pool.json (scenario, source, fallback, items, AutoIF items, items per method)
With scenario autoif and no AutoIF item left, `on_empty: evol` takes the evol pool and says so (fallback in
the metrics and meta, a warning on stderr); `on_empty: fail` stops with that message.
"""

import argparse
import sys

import polars as pl

from evolforge.steps.scenario import pick_pool
from evolforge.core import validation
from evolforge.core.errors import run_stage
from evolforge.core.params import load_params, load_section
from evolforge.core.records import LINEAGE, TABLE, write_json
from evolforge.core.stream import check_chunks, iter_chunks, peak_rss_mib, table_file, table_schema, write_output_chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evol", required=True)
    ap.add_argument("--autoif", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, rows = load_section(params, "autoif"), load_section(params, "data").chunk_rows
    files = {args.evol: table_file(args.evol), args.autoif: table_file(args.autoif)}
    # the pool is one of the two tables unchanged, chosen on whether the AutoIF one has rows: the choice is
    # made on each table's first row, and the chosen table then streams through (docs/scale.md)
    heads = [next(iter(iter_chunks(files[path], 1)), pl.DataFrame(schema=table_schema(files[path]))) for path in (args.evol, args.autoif)]
    pool = pick_pool(cfg.scenario, *heads, cfg.on_empty, evol_source=args.evol, autoif_source=args.autoif)
    source = files[pool.source]
    check_chunks(source, validation.item_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), rows)
    items = pl.scan_parquet(source).select(pl.len()).collect().item()
    if not items:
        raise validation.DataError(pool.source, "non-empty pool", detail=f"no answered items for scenario {cfg.scenario!r}")
    per_method = {m: int(n) for m, n in pl.scan_parquet(source).group_by("method").len().sort("method").collect(engine="streaming").iter_rows()}
    write_output_chunks(args.out, {TABLE: (table_schema(source), iter_chunks(source, rows))},
                        meta={"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback})
    write_json(args.metrics, {"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback,
                              "items": items, "autoif_items": pl.scan_parquet(files[args.autoif]).select(pl.len()).collect().item(),
                              "per_method": per_method, "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    if pool.fallback:
        print(f"pick_scenario: WARNING: scenario autoif fell back to {pool.source} ({pool.fallback}); "
              f"set autoif.on_empty: fail to stop instead", file=sys.stderr)
    print(f"pick_scenario: {pool.scenario}: {items} items from {pool.source}")


if __name__ == "__main__":
    run_stage(main)
