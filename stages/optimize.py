"""optimize stage: Auto Evol-Instruct's evolving-method optimization on a development set.

Reads:  data/seed (id, instruction, input), params.yaml `optimize` (initial_method, steps, candidates,
        batch_size, dev_size, trajectory_rounds, patience, selection, evolver_temperature, seed,
        unusable_failure_rate, on_unusable, judge_difficulty, optimization_prompt, candidates_file, racing,
        format_cut, ...), the `evolve` fields of the
        development runs (strategy, controls, method_controls, max_tokens, method_max_tokens, few_shot,
        missing_marker, elimination, repetition), roles `evolver` and `optimizer`
        (and `judge` with the `judge` section, under judge_difficulty), prompts/optimize/*.j2 (and the
        optimize.candidates_file under prompts/optimize/),
        prompts/respond/response.j2, prompts/judge/difficulty_score*.j2
Writes: data/method/ (method.txt: the method to evolve with; log.jsonl: one row per step; meta.json, whose
        `fallback` is "evol" when the evolver cannot follow the method's format and on_unusable is evol),
        metrics/optimize.json (with `outcome`: did the method beat the initial one, or why not; `dev_difficulty`;
        each candidate's items measured and why racing stopped it; `optimizer_limit`),
        metrics/plots/optimize.json (step, failure_rate, best_failure_rate)
With evolve.strategy other than `auto` the stage costs nothing (the initial method, no model loaded); with
on_unusable `stop`, an unusable method stops the stage with a message. Logic: src/evolforge/steps/optimize/step.py.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section, read_params
from evolforge.config.optimize_answer import answer_problems
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.step import run


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, reads=["--seed"], writes=["--out", "--metrics", "--plot"], prompts=True, argv=argv)
    params = read_params(args.params)
    cfg, evolve = load_section(params, "optimize", OptimizeSettings), load_section(params, "evolve", EvolveSection)
    judge = load_section(params, "judge", JudgeSettings) if cfg.judge_difficulty else None
    if problems := answer_problems(params):  # what would empty every candidate, before any request
        raise ParamsError(problems)
    llms = RoleLLMs(None)  # a strategy other than auto: the initial method, no model
    if evolve.strategy == "auto":
        llms = RoleLLMs(load_llm_params(params, ("evolver", "optimizer", "judge")) if cfg.judge_difficulty
                        else load_llm_params(params, ("evolver", "optimizer")))
    write(args, run(args.seed, args.out, cfg, evolve, judge, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
