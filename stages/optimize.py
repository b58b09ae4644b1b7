"""optimize stage: Auto Evol-Instruct's evolving-method optimization on a development set.

Reads:  data/seed (id, instruction, input), params.yaml `optimize` (initial_method, steps, candidates,
        batch_size, dev_size, trajectory_rounds, patience, selection, evolver_temperature, seed,
        unusable_failure_rate, on_unusable, judge_difficulty), `evolve.strategy`, roles `evolver` and `optimizer`
        (and `judge` with the `judge` section, under judge_difficulty), prompts/optimize/*.j2,
        prompts/respond/response.j2, prompts/judge/difficulty_score*.j2
Writes: data/method/ (method.txt: the method to evolve with; log.jsonl: one row per step; meta.json, whose
        `fallback` is "evol" when the evolver cannot follow the method's format and on_unusable is evol),
        metrics/optimize.json (with `outcome`: did the method beat the initial one, or why not; `dev_difficulty`),
        metrics/plots/optimize.json (step, failure_rate, best_failure_rate)
With evolve.strategy other than `auto` the stage costs nothing (the initial method, no model loaded); with
on_unusable `stop`, an unusable method stops the stage with a message. Logic: src/evolforge/steps/optimize/step.py.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import read_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.optimize.step import run


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, reads=["--seed"], writes=["--out", "--metrics", "--plot"], prompts=True, argv=argv)
    write(args, run(args.seed, args.out, read_params(args.params), PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
