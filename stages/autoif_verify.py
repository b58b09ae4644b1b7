"""autoif_verify stage: verification functions + test cases per constraint, cross-validated in the sandbox
(AutoIF steps 2 and 3).

Reads:  data/autoif/constraints/, prompts/autoif/verification.j2 (form paper) or verification_function.j2,
        verification_cases.j2 and verification_examples.yaml (form lines), params.yaml `scenario`, `autoif` (form,
        both_outcomes, functions_per_constraint, max_constraints, temperature, top_p, max_tokens, min_accuracy,
        min_functions, min_cases, case_timeout_s, memory_mb, workers, seed), roles `evolver`
Writes: data/autoif/verified/items.parquet (constraints: status kept/failed + reason and counts),
        functions.parquet (one row per sample: the function, its run, accuracy, status, reason),
        cases.parquet (deduplicated test cases: kept/failed + reason), meta.json; metrics/autoif/verify.json
Runs only when `scenario: autoif`; otherwise writes empty tables and `skipped: true`.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.autoif.verify import run


def main() -> None:
    args = arguments(__doc__, reads=["--constraints"], writes=["--out", "--metrics"], prompts=True)
    params = read_params(args.params)
    cfg = load_section(params, "autoif", AutoIFSettings)
    llms = RoleLLMs(load_llm_params(params, ("evolver",)) if cfg.scenario == "autoif" else None)  # else skipped
    write(args, run(args.constraints, cfg, llms, PromptLibrary(args.prompts)))


if __name__ == "__main__":
    run_stage(main)
