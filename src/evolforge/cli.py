"""The ``evolforge`` command: small helpers around the pipeline's artifacts.

    evolforge lineage ITEM_ID [--seed DIR] [--evolved DIR] [--raw]
    evolforge report [--out reports/index.html] [--compare A B] [--labels A B]
    evolforge plots export [--format svg|png|pdf] [--out reports/plots] [--revs REV ...]
    evolforge card [--selected DIR]
    evolforge push-to-hub REPO_ID [--selected DIR] [--private]
    evolforge check [params.yaml]      check the whole params file against the schema
                                       (docs/reference/params-validation.md)
    evolforge plan [STAGE ...] [--json]  requests, tokens, cost and time the stale stages would spend
                                         (docs/explanation/llm.md)
    evolforge --version

The artifacts these read lie where dvc.yaml puts them: a path left out is read from the command of the stage
that reads it (the report stage's for lineage and report, the select stage's for card and push-to-hub).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evolforge import __version__
from evolforge.config.bounds import Refusal
from evolforge.steps.common.layout import Layout, stage_flags
from evolforge.steps.common.lineage import chain, format_chain
from evolforge.core.stage import run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="evolforge", description="evolforge helpers")
    ap.add_argument("--version", action="version", version=f"evolforge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    lin = sub.add_parser("lineage", help="print the chain of one item from its seed to its last round")
    lin.add_argument("item_id", help="an item id (or a unique prefix)")
    lin.add_argument("--seed", help="the seed stage's output (default: the report stage's --seed in dvc.yaml)")
    lin.add_argument("--evolved", help="folder holding round_<k>/ outputs (default: the report stage's --evolved)")
    lin.add_argument("--raw", action="store_true",
                     help="show the evolver's raw output for every step, not only failed ones")

    rep = sub.add_parser("report", help="write the offline HTML report of a dataset version (or two, side by side)")
    rep.add_argument("--out", default="reports/index.html")
    rep.add_argument("--root", default=".", help="the version to show: a folder laid out as the pipeline writes it "
                                                 "(where dvc.yaml's report stage reads each artifact)")
    rep.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="two versions side by side: folders, git revisions or experiment names (read through DVC)")
    rep.add_argument("--labels", nargs="+", help="names shown for the versions (default: as given)")

    plots = sub.add_parser("plots", help="plot files for papers")
    plots_sub = plots.add_subparsers(dest="plots_command", required=True)
    exp = plots_sub.add_parser("export", help="every dvc.yaml plot as SVG, PNG or PDF (vl-convert, offline)")
    exp.add_argument("--format", default="svg", choices=["svg", "png", "pdf"])
    exp.add_argument("--out", default="reports/plots")
    exp.add_argument("--scale", type=float, default=2.0, help="PNG pixel density")
    exp.add_argument("--revs", nargs="+", help="git revisions / experiments to draw side by side (dvc plots diff)")

    card = sub.add_parser("card", help="(re)write the dataset card and the datasets-loadable folder of a selection")
    card.add_argument("--selected", help="the selection (default: the select stage's --out in dvc.yaml, in --root)")
    card.add_argument("--root", default=".", help="the version's folder, holding the outputs where dvc.yaml's select "
                                                  "stage reads them")
    card.add_argument("--params", default="params.yaml")

    hub = sub.add_parser("push-to-hub", help="upload the selection (Parquet shards + card) to the Hugging Face Hub")
    hub.add_argument("repo_id", help="owner/name of the dataset repository")
    hub.add_argument("--selected", help="the selection (default: the select stage's --out in dvc.yaml)")
    hub.add_argument("--private", action="store_true")
    check = sub.add_parser("check", help="check params.yaml against the schema: unknown or look-alike keys, "
                                         "types, ranges, secrets; exits non-zero with every problem listed")
    check.add_argument("params", nargs="?", default="params.yaml")
    plan = sub.add_parser("plan", help="what `dvc repro` would ask of the models, without asking: requests the "
                                       "call cache cannot answer, tokens, cost and time per stage, role and call")
    plan.add_argument("stages", nargs="*", help="plan these stages (stale or not) instead of the stale ones")
    plan.add_argument("--json", action="store_true", help="the plan as JSON")
    plan.add_argument("--params", default="params.yaml")
    plan.add_argument("--command", dest="stage_command", nargs=argparse.REMAINDER,
                      help="plan the dvc.yaml stage that runs this command (what a stage's --dry-run does)")
    args = ap.parse_args(argv)
    name = f"evolforge {args.command}" + (f" {args.plots_command}" if args.command == "plots" else "")
    run_stage(lambda: run(args), name=name)  # one clear line and a non-zero exit on any error, no traceback


def run(args: argparse.Namespace) -> None:
    if args.command == "check":
        from evolforge.schema import asked_of_roles, load_params

        from evolforge.config.servers import server_problems

        params = load_params(args.params)
        # what a role's backend or server cannot honour (without asking a server), as the stages would refuse it
        problems = server_problems(params, asked_of_roles(params))
        if problems:
            raise Refusal(f"{args.params}: " + "\n".join(f"  {p}" for p in problems))
        print(f"{args.params}: ok ({len(params)} sections)")
    elif args.command == "lineage":
        from evolforge.steps.common.funnel import evolved_rounds

        declared = stage_flags("report") if args.seed is None or args.evolved is None else {}
        seed, evolved = args.seed or declared["--seed"], args.evolved or declared["--evolved"]
        print(format_chain(chain(args.item_id, seed, evolved_rounds(Path(evolved))), raw=args.raw))
    elif args.command == "report":
        from evolforge.report import build_report

        sources = list(args.compare) if args.compare else [args.root]
        try:
            print(build_report(args.out, Layout.from_flags(stage_flags("report")), sources, args.labels))
        except (RuntimeError, ValueError) as err:
            raise Refusal(str(err)) from None
    elif args.command == "plots":
        from evolforge.report.export import export_plots

        try:
            for path in export_plots(args.out, args.format, args.revs, scale=args.scale):
                print(path)
        except (RuntimeError, ValueError) as err:
            raise Refusal(str(err)) from None
    elif args.command == "card":
        from evolforge.config.loader import load_section
        from evolforge.schema import load_params
        from evolforge.steps.select.card import card_params, write_card
        from evolforge.steps.select.settings import SelectSettings

        declared = stage_flags("select")
        selected = args.selected or Path(args.root) / declared["--out"]
        card = Layout.from_flags(declared, clean="items").under(args.root)
        params = load_params(args.params)
        print(write_card(selected, card, card_params(params), load_section(params, "select", SelectSettings)))
    elif args.command == "plan":
        from evolforge.plan import make_plan
        from evolforge.plan.table import dry_run_command, render

        if args.stage_command:
            dry_run_command(args.stage_command)
        else:
            made = make_plan(".", args.stages or None, args.params)
            print(json.dumps(made.to_json(), indent=2) if args.json else render(made))
    elif args.command == "push-to-hub":
        from evolforge.steps.select.card import push_to_hub

        print(push_to_hub(args.selected or stage_flags("select")["--out"], args.repo_id, private=args.private))

if __name__ == "__main__":
    main()
