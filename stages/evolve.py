"""evolve stage (one DVC stage per round): evolve the pool of the previous round once.

Reads:  --src (data/seed, or data/evolved/round_{k-1}), data/method/method.txt and meta.json beside it
        (strategies auto, auto_initial: the method; auto: the optimize stage's `fallback` when the evolver
        cannot follow it), params.yaml `evolve`, roles `evolver` (and `judge` for the judge checks and, with
        `evolve.rewrites_per_instruction` above 1, `judge` (score_prompt, max_tokens, constrain, probabilities) to
        choose the hardest rewrite, `responder` for the response rules, `embedder` and `diversity` (embedder) for the
        same_problem rule)
Writes: data/evolved/<round>/ items.parquet (one row per item in: evolved or failed, with reason),
        pool.parquet (what the next round evolves), meta.json; metrics/evolve/<round>.json
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.embedding import role_embedder
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.evolve.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--src", "--method"], values=["--round"],
                     writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    evolve, respond = load_section(params, "evolve", EvolveSection), load_section(params, "respond", RespondSettings)
    llms = RoleLLMs(load_llm_params(params, ("evolver", "judge", "responder")))
    embed = None
    if evolve.rule("same_problem"):  # roles.embedder is read only when the rule is on
        kind = load_section(params, "diversity", DiversitySettings).embedder
        embed = role_embedder(load_role(params, "embedder"), kind)
    judged = load_section(params, "judge", JudgeSettings) if evolve.rewrites_per_instruction > 1 else None
    write(args, run(args.round, args.src, args.method, evolve, respond, llms, PromptLibrary(args.prompts), embed,
                    judged))


if __name__ == "__main__":
    run_stage(main)
