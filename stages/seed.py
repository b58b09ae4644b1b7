"""seed stage: normalise the seed source into data/seed/.

Reads:  params.yaml `seed` (source, format, fields, config, split, limit, seed)
Writes: data/seed/items.parquet (+ meta.json), metrics/seed.json
"""

import argparse

from evolforge.core.params import load_params, section
from evolforge.core.records import write_json, write_output
from evolforge.build.seed import build_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/seed")
    ap.add_argument("--metrics", default="metrics/seed.json")
    args = ap.parse_args()

    cfg = section(load_params(args.params), "seed")
    table, metrics = build_seed(
        cfg["source"], fmt=cfg.get("format", "auto"), fields=cfg.get("fields"), config=cfg.get("config"),
        split=cfg.get("split", "train"), limit=cfg.get("limit"), seed=cfg.get("seed", 0),
    )
    write_output(args.out, table, meta={"params": cfg})
    write_json(args.metrics, metrics)
    print(f"seed: {metrics['rows_written']} items ({metrics['duplicates_removed']} duplicates removed) -> {args.out}")


if __name__ == "__main__":
    main()
