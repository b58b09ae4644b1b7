"""seed stage: normalise the seed source into data/seed/.

Reads:  params.yaml `seed` (source, format, fields, config, split, revision, limit, seed); the source file
Writes: data/seed/items.parquet, duplicates.parquet (each dropped duplicate and the row kept instead),
        meta.json; metrics/seed.json (counts, and the source file's sha256)
Rules for the source (what is refused and why): docs/seeds.md.
"""

import argparse
import dataclasses

from evolforge.steps.seed import build_seed
from evolforge.core.errors import run_stage
from evolforge.core.params import load_params, load_section
from evolforge.core.records import write_json, write_output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    cfg = load_section(load_params(args.params), "seed")
    table, metrics, duplicates = build_seed(
        cfg.source, fmt=cfg.format, fields=cfg.fields, config=cfg.config, split=cfg.split,
        revision=cfg.revision, limit=cfg.limit, seed=cfg.seed,
    )
    write_output(args.out, table, meta={"params": dataclasses.asdict(cfg)}, tables={"duplicates.parquet": duplicates})
    write_json(args.metrics, metrics)
    print(f"seed: {metrics['rows_written']} items ({metrics['duplicates_removed']} duplicates removed) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
