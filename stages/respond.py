"""respond stage: answer the surviving instructions of the chosen rounds with the responder role.

Reads:  data/evolved/<round>/ for each round in params.yaml `respond.rounds` (data/seed when include_seed),
        params.yaml `respond`, roles `responder`
Writes: data/responses/items.parquet (lineage + instruction, input, output, response_status,
        response_finish_reason, instruction_finish_reason), meta.json;
        metrics/respond.json (items, responses per response_status, calls, cache hits, items per round)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.respond.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--evolved", "--seed"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg, evolve = load_section(params, "respond", RespondSettings), load_section(params, "evolve", EvolveSection)
    llms = RoleLLMs(load_llm_params(params, ("responder",)))
    write(args, run(args.evolved, args.seed, args.out, cfg, evolve.rounds, load_section(params, "data", DataSettings),
                    llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
