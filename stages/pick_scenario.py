"""pick_scenario stage: the answered pool that dedup/judge/score/select read, from the branch `scenario` names.

Reads:  params.yaml `autoif.scenario` (evol | autoif), `autoif.on_empty` (evol | fail);
        data/responses/ (evol) and data/autoif/responses/ (autoif)
Writes: data/pool/items.parquet (the chosen table, unchanged), meta.json (scenario, source, fallback);
        metrics/pool.json (scenario, source, fallback, items, AutoIF items, items per method)
With scenario autoif and no AutoIF item left, `on_empty: evol` takes the evol pool and says so (fallback in
the metrics and meta, a warning on stderr); `on_empty: fail` stops with that message.
"""

import argparse
import sys

from evolforge.steps.scenario import pick_pool
from evolforge.core import validation
from evolforge.core.errors import run_stage
from evolforge.core.params import load_params, load_section
from evolforge.core.records import LINEAGE, read_table, write_json, write_output
from evolforge.core.stream import peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evol", default="data/responses")
    ap.add_argument("--autoif", default="data/autoif/responses")
    ap.add_argument("--out", default="data/pool")
    ap.add_argument("--metrics", default="metrics/pool.json")
    args = ap.parse_args()

    cfg = load_section(load_params(args.params), "autoif")
    evol, autoif = read_table(args.evol), read_table(args.autoif)
    pool = pick_pool(cfg.scenario, evol, autoif, cfg.on_empty, evol_source=args.evol, autoif_source=args.autoif)
    table = pool.table
    validation.check(table, validation.item_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), pool.source)
    if table.is_empty():
        raise validation.DataError(pool.source, "non-empty pool", detail=f"no answered items for scenario {cfg.scenario!r}")
    per_method = {m: int(n) for m, n in table.group_by("method").len().sort("method").iter_rows()}
    write_output(args.out, table, meta={"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback})
    write_json(args.metrics, {"scenario": pool.scenario, "source": pool.source, "fallback": pool.fallback,
                              "items": table.height, "autoif_items": autoif.height, "per_method": per_method,
                              "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    if pool.fallback:
        print(f"pick_scenario: WARNING: scenario autoif fell back to {pool.source} ({pool.fallback}); "
              f"set autoif.on_empty: fail to stop instead", file=sys.stderr)
    print(f"pick_scenario: {pool.scenario}: {table.height} items from {pool.source}")


if __name__ == "__main__":
    run_stage(main)
