"""verify stage: every answer that could be selected checked -- code run against tests it did not write, numbers
recomputed, the rest judged for correctness (docs/explanation/verification.md).

Reads:  data/clean/ (the deduplicated, decontaminated answers, data.chunk_rows at a time), params.yaml `verify`,
        `respond` (the sampling of respond's own request, reused for self-consistency), roles `responder`, `judge`
Writes: data/verified/items.parquet (id, round, verify_method, verify_verdict, verify_evidence, verify_confidence),
        metrics/verify.json (items per method and verdict, calls, tokens)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import read_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.verify.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics"], prompts=True)
    write(args, run(args.items, args.out, read_params(args.params), PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
