"""finetune stage: supervised fine-tuning of the base model on the selected training set (TRL SFTTrainer).

Reads:  data/selected/train.jsonl (conversational prompt/completion), params.yaml `finetune`, roles `base`
Writes: models/sft/ (full model, or LoRA adapter, + tokenizer), metrics/train.json, metrics/plots/train_loss.json,
        metrics/train_live/ (DVCLive: loss, learning rate, grad norm per step, written while training runs)

Multi-GPU (DeepSpeed ZeRO-3):
    accelerate launch --config_file configs/accelerate_zero3.yaml stages/finetune.py
"""

from evolforge.core.stage import WALL_S, arguments, process_wall_s, run_stage
from evolforge.io.jsonfiles import read_jsonl
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.config.training import FinetuneSettings
from evolforge.io.records import write_json
from evolforge.train.finetune import finetune


def main() -> None:
    args = arguments(__doc__, reads=["--train"], writes=["--out", "--metrics", "--plot", "--live"])
    params = read_params(args.params)
    base = load_role(params, "base")
    result = finetune(base.model, read_jsonl(args.train), args.out, load_section(params, "finetune", FinetuneSettings),
                      revision=base.revision,
                      live_dir=args.live)
    if result.is_main_process:
        write_json(args.metrics, {**result.metrics, WALL_S: process_wall_s()})
        write_json(args.plot, result.loss_curve)
        print(f"finetune: {result.metrics}")


if __name__ == "__main__":
    run_stage(main)
