"""evaluate stage: benchmark the base model and the fine-tuned one with lm-evaluation-harness.

Reads:  models/sft/ (model or LoRA adapter), params.yaml `evaluate`, roles `base`
Writes: metrics/eval.json ({"base": {...}, "finetuned": {...}, "skipped": {...}}: both rows side by side,
        so `dvc metrics diff` and `dvc exp show` tell whether this data version made the model better),
        data/eval/<label>/<benchmark>.jsonl (per-sample logs) and results.json
(The script is not called evaluate.py: stages/ comes first on sys.path and would shadow the
`evaluate` package that lm-evaluation-harness imports.)
"""

import argparse
import dataclasses

from evolforge.core.params import load_params, load_role, load_section
from evolforge.eval.harness import evaluate
from evolforge.core.records import write_json
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/sft")
    ap.add_argument("--samples", default="data/eval")
    ap.add_argument("--metrics", default="metrics/eval.json")
    args = ap.parse_args()

    params = load_params(args.params)
    # checked whole by load_params, secrets in backend_args included (the harness's API models read
    # OPENAI_API_KEY from the environment)
    cfg = load_section(params, "evaluate")
    base = load_role(params, "base")
    report = evaluate({"base": base.model, "finetuned": args.model}, args.samples, revision=base.revision, **dataclasses.asdict(cfg))
    write_json(args.metrics, report)
    for label in ("base", "finetuned"):
        print(f"{label}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(report[label].items()) if not k.endswith("/n")))
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")


if __name__ == "__main__":
    run_stage(main)
