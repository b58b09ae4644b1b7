"""Brute-force check of a run's selected training set: every pair's Jaccard over the shingles dedup uses.

    PYTHONPATH=src python bench/selected_near_duplicates.py [--root .] [--table data/selected]

Reads ``<root>/<table>/items.parquet`` and ``<root>/params.yaml`` (``dedup.threshold``, ``dedup.shingle_size``)
and compares every pair exactly (no MinHash): the text is dedup's ``item_text`` (normalised instruction +
input), the shingles its word ``shingle_size``-grams as plain strings (not their 64-bit hashes). Prints the
most similar pair and the pairs at or above the threshold; exit status 1 when there is one. Quadratic: meant
for a selected set (thousands of rows), not a pool.
"""

import argparse
import itertools
import sys
from pathlib import Path

import polars as pl

from evolforge.core.text import item_text
from evolforge.steps.common.shingles import shingles
from evolforge.config.loader import read_params, load_section
from evolforge.steps.dedup.settings import DedupSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--table", default="data/selected")
    args = ap.parse_args()
    cfg = load_section(read_params(str(args.root / "params.yaml")), "dedup", DedupSettings)
    table = pl.read_parquet(args.root / args.table / "items.parquet")
    sets = [set(shingles(item_text(q, x), cfg.shingle_size)) for q, x in zip(table["instruction"], table["input"])]
    pairs = [(len(a & b) / len(a | b), i, j) for (i, a), (j, b) in itertools.combinations(enumerate(sets), 2) if a | b]
    above = [p for p in pairs if p[0] >= cfg.threshold]
    print(f"{args.table}: {table.height} items, {len(pairs)} pairs, dedup.threshold {cfg.threshold}, "
          f"shingle_size {cfg.shingle_size}")
    if pairs:
        best, i, j = max(pairs)
        print(f"max pairwise Jaccard {best:.4f}: {table['id'][i]} / {table['id'][j]}\n"
              f"  {table['instruction'][i][:100]!r}\n  {table['instruction'][j][:100]!r}")
    for score, i, j in sorted(above, reverse=True):
        print(f"  ABOVE THRESHOLD {score:.4f}: {table['id'][i]} / {table['id'][j]}")
    sys.exit(1 if above else 0)


if __name__ == "__main__":
    main()
