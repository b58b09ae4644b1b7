"""report stage: the dataset version at a glance, as one offline HTML page.

Reads:  data/seed, data/evolved/round_*, data/responses, data/clean (when present), data/judged, data/scores,
        data/selected, metrics/*.json, metrics/plots/, metrics/train_live/, models/identity.json (when present)
Writes: reports/index.html (self-contained: the Vega libraries are inlined; no request leaves the page);
        --metrics metrics/summary.json: the headline metrics `dvc exp show` compares (report/summary.py)
Params: none (the page shows what the other stages wrote)

Two versions side by side (not a stage; experiments or folders): evolforge report --compare A B
"""

from evolforge.core.stage import arguments, run_stage
from evolforge.io.records import write_json
from evolforge.report import build_report
from evolforge.report.summary import headline


def main() -> None:
    args = arguments(__doc__, values=["--root"], writes=["--out", "--metrics"])
    write_json(args.metrics, headline(args.root))
    path = build_report(args.out, [args.root], ["workspace"])
    print(f"report: {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    run_stage(main)
