"""autoif_constraints stage: self-instruct new verifiable constraints from the seed constraints (AutoIF step 1).

Reads:  the seed constraints file (--seeds), prompts/autoif/self_instruct.j2,
        params.yaml `scenario`, `autoif` (self_instruct_calls, new_per_call, temperature, top_p, max_tokens, seed),
        roles `evolver`
Writes: data/autoif/constraints/items.parquet (one row per seed and per parsed line; dropped lines keep
        failure_reason: not_a_list_item, duplicate, too_short, too_long), meta.json; metrics/autoif/constraints.json
Runs only when `scenario: autoif`; otherwise writes an empty table and `skipped: true`.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.autoif.constraints import run


def main() -> None:
    args = arguments(__doc__, reads=["--seeds"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg = load_section(params, "autoif", AutoIFSettings)
    llms = RoleLLMs(load_llm_params(params, ("evolver",)) if cfg.scenario == "autoif" else None)  # else skipped
    write(args, run(args.seeds, cfg, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
