"""verify stage: every answer that could be selected checked -- code run against tests it did not write, numbers
recomputed, the rest judged for correctness (docs/explanation/verification.md).

Reads:  data/clean/ (the deduplicated, decontaminated answers, data.chunk_rows at a time), params.yaml `verify`,
        `respond` (the sampling of respond's own request, reused for self-consistency), roles `responder`, `judge`
Writes: data/verified/items.parquet (id, round, verify_method, verify_verdict, verify_evidence, verify_confidence),
        metrics/verify.json (items per method and verdict, calls, tokens)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.verify.settings import VerifySettings
from evolforge.steps.verify.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg, respond = load_section(params, "verify", VerifySettings), load_section(params, "respond", RespondSettings)
    llms = RoleLLMs(load_llm_params(params, ("responder", "judge")))
    write(args, run(args.items, args.out, cfg, respond, load_section(params, "data", DataSettings), llms,
                    PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
