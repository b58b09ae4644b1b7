"""respond stage: answer the surviving instructions of the chosen rounds with the responder role.

Reads:  data/evolved/<round>/ for each round in params.yaml `respond.rounds` (data/seed when include_seed),
        params.yaml `respond`, roles `responder`
Writes: data/responses/items.parquet (lineage + instruction, input, output, response_status,
        response_finish_reason, instruction_finish_reason), meta.json;
        metrics/respond.json (items, responses per response_status, calls, cache hits, items per round)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import read_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.respond.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--evolved", "--seed"], writes=["--out", "--metrics"], prompts=True)
    write(args, run(args.evolved, args.seed, args.out, read_params(args.params), PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
