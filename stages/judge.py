"""judge stage: difficulty level (5 labels) and difficulty score (0-100) for every answered item.

Reads:  data/clean/ (the deduplicated, decontaminated answers, data.chunk_rows at a time), params.yaml `judge`
        (score_prompt, max_tokens, constrain, probabilities), roles `judge`
Writes: data/judged/items.parquet (id + difficulty columns), metrics/judge.json,
        metrics/plots/difficulty_levels.json (level shares per round)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.judge.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics", "--plot"], prompts=True)
    params = read_params(args.params)
    cfg, data = load_section(params, "judge", JudgeSettings), load_section(params, "data", DataSettings)
    llms = RoleLLMs(load_llm_params(params, ("judge",)))
    write(args, run(args.items, args.out, cfg, data, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
