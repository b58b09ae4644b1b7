"""compare stage: win-tie-lose of this experiment's fine-tuned model against the base (or another model),
judged on a shared instruction set (the SLM paper's AlpacaFarm study, offline on a small shipped list).

Reads:  --instructions (a seed-format file: instruction, input), --model (models/sft: a model or LoRA adapter
        folder), params.yaml `compare` (against, limit, both_orders, parse, max_tokens, judge_max_tokens),
        roles `base` (the other side unless `compare.against` names a model) and `judge`, prompts/respond/response.j2,
        prompts/judge/win_tie_lose.j2
Writes: data/compare/items.parquet (both answers and finish reasons, raw judge answers, verdicts; a pair with a
        failed answer is not judged and keeps failure_reason), meta.json;
        metrics/compare.json (win / tie / lose counts and rates from the fine-tuned model's side, unjudged)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.compare.settings import CompareSettings
from evolforge.steps.compare.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--instructions", "--model"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg, llms = load_section(params, "compare", CompareSettings), RoleLLMs(load_llm_params(params, ("base", "judge")))
    write(args, run(args.instructions, args.model, cfg, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
