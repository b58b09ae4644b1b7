"""autoif_respond stage: pair each verified constraint with queries and answer them (AutoIF step 4).

Reads:  data/autoif/verified/ (items + functions), the query source params.yaml `autoif.queries.source`
        (a local .jsonl/.json/.parquet/.csv or a hub dataset, read like `seed.source`), prompts/autoif/respond.j2,
        params.yaml `scenario`, `autoif` (queries, queries_per_constraint, paired_constraints, response_max_tokens,
        verify_responses, response_min_pass, case_timeout_s, memory_mb, workers, seed), roles `responder`
Writes: data/autoif/responses/items.parquet in the schema of data/responses (lineage + instruction = constraint,
        input = query, output), rejected.parquet (responses the constraint's functions refused), meta.json;
        metrics/autoif/respond.json (pairs, pass rates)
Runs only when `scenario: autoif`; otherwise writes an empty table and `skipped: true`.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.autoif.respond import run


def main() -> None:
    args = arguments(__doc__, reads=["--verified"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg = load_section(params, "autoif", AutoIFSettings)
    llms = RoleLLMs(load_llm_params(params, ("responder",)) if cfg.scenario == "autoif" else None)  # else skipped
    write(args, run(args.verified, cfg, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
