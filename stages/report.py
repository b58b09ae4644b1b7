"""report stage: the dataset version at a glance, as one offline HTML page.

Reads:  data/seed, data/evolved/round_*, data/responses, data/clean (when present), data/judged, data/scores,
        data/selected, metrics/*.json, metrics/plots/, metrics/train_live/, models/identity.json (when present)
Writes: reports/index.html (self-contained: the Vega libraries are inlined; no request leaves the page);
        --metrics metrics/summary.json: the headline metrics `dvc exp show` compares (report/summary.py)
Params: none (the page shows what the other stages wrote)

Two versions side by side (not a stage; experiments or folders): evolforge report --compare A B
"""

import argparse

from evolforge.core.records import write_json
from evolforge.report import build_report
from evolforge.report.summary import headline
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True, help="the version's root folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True, help="the headline metrics (metrics/summary.json)")
    args = ap.parse_args()
    write_json(args.metrics, headline(args.root))
    path = build_report(args.out, [args.root], ["workspace"])
    print(f"report: {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    run_stage(main)
