"""The ``evolforge`` command: small helpers around the pipeline's artifacts.

    evolforge lineage ITEM_ID [--seed data/seed] [--evolved data/evolved]
    evolforge check [params.yaml]      check the whole params file against the schema (docs/params.md)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evolforge.build.lineage import chain, format_chain
from evolforge.core.errors import run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="evolforge", description="evolforge helpers")
    sub = ap.add_subparsers(dest="command", required=True)
    lin = sub.add_parser("lineage", help="print the chain of one item from its seed to its last round")
    lin.add_argument("item_id", help="an item id (or a unique prefix)")
    lin.add_argument("--seed", default="data/seed")
    lin.add_argument("--evolved", default="data/evolved", help="folder holding round_<k>/ outputs")
    check = sub.add_parser("check", help="check params.yaml against the schema: unknown or look-alike keys, "
                                         "types, ranges, secrets; exits non-zero with every problem listed")
    check.add_argument("params", nargs="?", default="params.yaml")
    args = ap.parse_args(argv)

    if args.command == "check":
        from evolforge.core.params import load_params

        def run() -> None:
            params = load_params(args.params)
            print(f"{args.params}: ok ({len(params)} sections)")

        run_stage(run, name="evolforge check")

    if args.command == "lineage":
        rounds = sorted((p for p in Path(args.evolved).glob("*/") if (p / "items.parquet").exists()),
                        key=lambda p: int(p.name.rsplit("_", 1)[-1]) if p.name.rsplit("_", 1)[-1].isdigit() else 0)
        print(format_chain(chain(args.item_id, args.seed, rounds)))


if __name__ == "__main__":
    main()
