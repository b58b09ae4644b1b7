"""pick_scenario stage: the answered pool that dedup/judge/score/select read, from the branch `scenario` names.

Reads:  params.yaml `autoif.scenario` (evol | autoif); data/responses/ (evol) or data/autoif/responses/ (autoif)
Writes: data/pool/items.parquet (the chosen table, unchanged), meta.json (scenario and source);
        metrics/pool.json (scenario, items, items per method)
"""

import argparse

from evolforge.build.autoif import read_scenario
from evolforge.core import validation
from evolforge.core.params import load_params
from evolforge.core.records import LINEAGE, read_table, write_json, write_output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--evol", default="data/responses")
    ap.add_argument("--autoif", default="data/autoif/responses")
    ap.add_argument("--out", default="data/pool")
    ap.add_argument("--metrics", default="metrics/pool.json")
    args = ap.parse_args()

    scenario = read_scenario(load_params(args.params))
    source = {"evol": args.evol, "autoif": args.autoif}[scenario]
    table = read_table(source)
    validation.check(table, validation.required_columns(LINEAGE + ["instruction", "input", "output"]) + validation.unique("id"), source)
    if table.is_empty():
        raise SystemExit(f"{source}: no answered items for scenario {scenario!r} (see its stages' metrics: were they skipped, or was nothing verified?)")
    per_method = {m: int(n) for m, n in table.group_by("method").len().sort("method").iter_rows()}
    write_output(args.out, table, meta={"scenario": scenario, "source": source})
    write_json(args.metrics, {"scenario": scenario, "items": table.height, "per_method": per_method})
    print(f"pick_scenario: {scenario}: {table.height} items from {source}")


if __name__ == "__main__":
    main()
