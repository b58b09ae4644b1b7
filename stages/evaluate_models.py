"""evaluate_base and evaluate stages: benchmark one model with lm-evaluation-harness.

`evaluate_base` runs it on roles.base (no --model), so the base is benchmarked once and again only when the
base model or the evaluation settings change; `evaluate` runs it on the fine-tuned model (--model models/sft).

Reads:  --model (a model folder or LoRA adapter; default roles.base), params.yaml `evaluate`, roles `base`
Writes: --metrics ({"<label>": {"<benchmark>/<metric>": value, ...}, "skipped": {...}}: metrics/eval_base.json
        and metrics/eval.json, so `dvc metrics show` / `dvc exp show` put base and fine-tuned side by side),
        --samples/<label>/<benchmark>.jsonl (per-sample logs) and results.json
(The script is not called evaluate.py: stages/ comes first on sys.path and would shadow the
`evaluate` package that lm-evaluation-harness imports.)
"""

import argparse
import inspect

from evolforge.core.params import load_params, load_role, section
from evolforge.eval.harness import evaluate
from evolforge.core.records import write_json
from evolforge.core.roles import refuse_secrets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--label", required=True, help="the result's name: base or finetuned")
    ap.add_argument("--model", default=None, help="model folder or adapter (default: roles.base)")
    ap.add_argument("--samples", required=True)
    ap.add_argument("--metrics", default="metrics/eval.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = dict(section(params, "evaluate"))
    allowed = [p.name for p in inspect.signature(evaluate).parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "revision"]
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise SystemExit(f"params.yaml evaluate: unknown key(s) {unknown}; expected some of {allowed}")
    # the harness's API models read OPENAI_API_KEY from the environment
    backend_args = cfg.get("backend_args") or {}
    refuse_secrets("evaluate.backend_args", backend_args.get("base_url"), backend_args, "evaluate.backend_args")
    base = load_role(params, "base")
    report = evaluate({args.label: args.model or base.model}, args.samples, revision=base.revision, **cfg)
    write_json(args.metrics, report)
    print(f"{args.label}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(report[args.label].items()) if not k.endswith("/n")))
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")


if __name__ == "__main__":
    main()
