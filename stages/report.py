"""report stage: the dataset version at a glance, as one offline HTML page.

Reads:  what its flags give: --seed, --evolved (round_*/), --responses, --pool, --dedup, --clean, --judged,
        --scores, --selected, --identities (models/identity.json), --score-metrics, --metrics-dir (every stage's
        metrics file by its name: *.json, plots/, train_live/, evolve/, autoif/)
Writes: reports/index.html (self-contained: the Vega libraries are inlined; no request leaves the page);
        --metrics metrics/summary.json: the headline metrics `dvc exp show` compares (report/summary.py)
Params: none (the page shows what the other stages wrote)

Two versions side by side (not a stage; experiments or folders): evolforge report --compare A B
"""

from evolforge.core.stage import arguments, run_stage
from evolforge.io.records import write_json
from evolforge.report import build_report
from evolforge.report.summary import headline
from evolforge.steps.common.layout import Layout


def main() -> None:
    args = arguments(__doc__, reads=["--seed", "--evolved", "--responses", "--pool", "--dedup", "--clean", "--judged",
                                     "--scores", "--selected", "--identities", "--score-metrics", "--metrics-dir"],
                     writes=["--out", "--metrics"])
    layout = Layout.from_flags(vars(args))
    write_json(args.metrics, headline(layout))
    # every output it reads was built before it by dvc repro: no stale metrics to warn about
    path = build_report(args.out, layout, ["."], ["workspace"], stale_check=False)
    print(f"report: {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    run_stage(main)
