"""evolver_analysis (optional, run by hand: not a dvc.yaml stage): the SLM paper's two evolver analyses on the
same seeds, for roles.evolver and any models listed in `evolver_analysis.evolvers` (steps/evolver_analysis/step.py):
top-token probability of the first generated tokens of greedy Evol-Instruct evolutions (paper Fig. 5), and
distinct method keywords in the Auto Evol-Instruct initial method's Step-1 lists (paper §3.3, judge role).

    python stages/evolver_analysis.py --seed data/seed --metrics metrics/evolver_analysis.json
                                      --plot metrics/plots/evolver_top_prob.json   (one line)

Reads:  --seed (the seed stage's output), params.yaml `evolver_analysis`, `evolve.breadth`,
        `optimize.initial_method`, roles `evolver` and `judge`, prompts/evolve, prompts/optimize,
        prompts/judge/method_keyword.j2
Writes: --metrics (per evolver: mean / median top-token probability, distinct keywords),
        --plot (share per probability bin and evolver)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.evolver_analysis.settings import AnalysisSettings
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.evolver_analysis.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--seed"], writes=["--metrics", "--plot"], prompts=True)
    params = read_params(args.params)
    cfg = load_section(params, "evolver_analysis", AnalysisSettings)
    evolve, optimize = load_section(params, "evolve", EvolveSection), load_section(params, "optimize", OptimizeSettings)
    llms = RoleLLMs(load_llm_params(params, ("judge", "evolver")))
    write(args, run(args.seed, cfg, evolve, optimize, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
