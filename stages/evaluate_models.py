"""evaluate_base and evaluate stages: benchmark one model with lm-evaluation-harness (eval/harness.py).

`evaluate_base` runs it on roles.base (no --model), so the base is benchmarked once and again only when the
base model or the evaluation settings change; `evaluate` runs it on the fine-tuned model (--model models/sft).
Reads:  --model (a model folder or LoRA adapter; default roles.base), params.yaml `evaluate`, roles `base`
Writes: --metrics ({"<label>": {"<benchmark>/<metric>": value, ...}, "skipped": {...}}: metrics/eval_base.json
        and metrics/eval.json, so `dvc metrics show` / `dvc exp show` put base and fine-tuned side by side),
        --samples/<label>/<benchmark>.jsonl (per-sample logs) and results.json
(Not called evaluate.py: stages/ comes first on sys.path and would shadow the `evaluate` package that
lm-evaluation-harness imports.)
"""

from evolforge.core.stage import WALL_S, arguments, process_wall_s, run_stage
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.config.training import EvaluateSettings
from evolforge.io.records import write_json
from evolforge.eval.harness import evaluate


def main() -> None:
    args = arguments(__doc__, values=["--label"], writes=["--samples", "--metrics"], optional={"--model": None})
    params = read_params(args.params)  # secrets in backend_args refused (API models read OPENAI_API_KEY from the env)
    base = load_role(params, "base")
    report = evaluate({args.label: args.model or base.model}, args.samples,
                      load_section(params, "evaluate", EvaluateSettings), revision=base.revision)
    write_json(args.metrics, {**report, WALL_S: process_wall_s()})
    print(f"{args.label}: "
          + ", ".join(f"{k}={v:.3f}" for k, v in sorted(report[args.label].items()) if not k.endswith("/n")))
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")


if __name__ == "__main__":
    run_stage(main)
