"""finetune stage: supervised fine-tuning of the base model on the selected training set (TRL SFTTrainer).

Reads:  data/selected/train.jsonl (conversational prompt/completion), params.yaml `finetune`, roles `base`
Writes: models/sft/ (full model, or LoRA adapter, + tokenizer), metrics/train.json, metrics/plots/train_loss.json,
        metrics/train_live/ (DVCLive: loss, learning rate, grad norm per step, written while training runs)

Multi-GPU (DeepSpeed ZeRO-3):
    accelerate launch --config_file configs/accelerate_zero3.yaml stages/finetune.py
"""

import argparse

from evolforge.core.params import load_params, load_role, load_section
from evolforge.train.finetune import finetune
from evolforge.core.jsonfiles import read_jsonl
from evolforge.core.records import write_json
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--live", required=True, help="DVCLive folder for per-step metrics")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "finetune")
    base = load_role(params, "base")
    rows = read_jsonl(args.train)

    result = finetune(base.model, rows, args.out, cfg, revision=base.revision, live_dir=args.live)
    if result.is_main_process:
        write_json(args.metrics, result.metrics)
        write_json(args.plot, result.loss_curve)
        print(f"finetune: {result.metrics}")


if __name__ == "__main__":
    run_stage(main)
