"""The ``evolforge`` command: small helpers around the pipeline's artifacts.

    evolforge lineage ITEM_ID [--seed data/seed] [--evolved data/evolved] [--raw]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evolforge.build.lineage import chain, format_chain


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="evolforge", description="evolforge helpers")
    sub = ap.add_subparsers(dest="command", required=True)
    lin = sub.add_parser("lineage", help="print the chain of one item from its seed to its last round")
    lin.add_argument("item_id", help="an item id (or a unique prefix)")
    lin.add_argument("--seed", default="data/seed")
    lin.add_argument("--evolved", default="data/evolved", help="folder holding round_<k>/ outputs")
    lin.add_argument("--raw", action="store_true", help="show the evolver's raw output for every step, not only failed ones")
    args = ap.parse_args(argv)

    if args.command == "lineage":
        rounds = sorted((p for p in Path(args.evolved).glob("*/") if (p / "items.parquet").exists()),
                        key=lambda p: int(p.name.rsplit("_", 1)[-1]) if p.name.rsplit("_", 1)[-1].isdigit() else 0)
        print(format_chain(chain(args.item_id, args.seed, rounds), raw=args.raw))


if __name__ == "__main__":
    main()
