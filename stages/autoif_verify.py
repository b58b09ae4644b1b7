"""autoif_verify stage: verification functions + test cases per constraint, cross-validated in the sandbox
(AutoIF steps 2 and 3).

Reads:  data/autoif/constraints/, prompts/autoif/verification.j2 (form paper) or verification_function.j2,
        verification_cases.j2 and verification_examples.yaml (form lines), params.yaml `scenario`, `autoif` (form, both_outcomes,
        functions_per_constraint, max_constraints, temperature, top_p, max_tokens, min_accuracy, min_functions,
        min_cases, case_timeout_s, memory_mb, workers, seed), roles `evolver`
Writes: data/autoif/verified/items.parquet (constraints: status kept/failed + reason and counts),
        functions.parquet (one row per sample: the function, its run, accuracy, status, reason),
        cases.parquet (deduplicated test cases: kept/failed + reason), meta.json; metrics/autoif/verify.json
Runs only when `scenario: autoif`; otherwise writes empty tables and `skipped: true`.
"""

import argparse
import dataclasses

from evolforge.steps.autoif import VERIFICATION_TEMPLATE, hash_sample, usable_constraints
from evolforge.steps.autoif_verify import verify_constraints, verify_summary
from evolforge.steps.scenario import read_scenario
from evolforge.steps.autoif_forms import (EXAMPLES_FILE, LINES_TEMPLATES, Copies, join_answers, load_demonstrations, parser_for,
                                          verification_conversations)
from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.core.params import load_params, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import read_table, write_json, write_output
from evolforge.core.errors import run_stage
from evolforge.eval.sandbox import isolation
from evolforge.llm import open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--constraints", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "autoif")
    table = read_table(args.constraints)
    validation.check(table, validation.item_columns(["id", "status", "constraint"]) + validation.unique("id"), args.constraints)
    active = read_scenario(params) == "autoif"
    constraints = hash_sample(usable_constraints(table), cfg.max_constraints, cfg.seed) if active else table.clear()

    prompts = PromptLibrary(args.prompts)
    demos = load_demonstrations(prompts) if active and cfg.form == "lines" else []
    samples: list[list[str | None]] = []
    meta = {"skipped": not active}
    stats: dict = {}  # the LLM's tokens, failures and cost, per role (none when nothing was asked)
    if active and constraints.height:
        llm = open_role(params, "evolver", open_cache(params))
        k = cfg.functions_per_constraint
        # per sample one conversation (paper) or two (lines: function, cases); n of them per sample
        conversations = [verification_conversations(cfg.form, c, prompts, demos, sample_index=i)
                         for c in constraints["constraint"].to_list() for i in range(k)]
        n = len(conversations[0])
        requests = [llm.request(turns, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed,
                                sample_index=i % k) for i, sample in enumerate(conversations) for turns in sample]
        answers = llm.complete(requests, desc="autoif verification functions")
        texts = [join_answers(answers[j:j + n]) for j in range(0, len(answers), n)]
        samples = [texts[i:i + k] for i in range(0, len(texts), k)]
        meta |= {"model": llm.label, "model_identity": llm.identity, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"]}
        stats = {"evolver": llm.stats}
    verified, functions, cases = verify_constraints(constraints, samples, cfg, parse=parser_for(cfg.form), copies=Copies.of(demos))

    metrics = verify_summary(verified, functions, cases) | {"skipped": not active, "sandbox": isolation() if active else None,
                                                           "calls": meta.get("calls", 0), "cache_hits": meta.get("cache_hits", 0),
                                                           "llm": stats}
    templates = [*LINES_TEMPLATES, EXAMPLES_FILE] if cfg.form == "lines" else [VERIFICATION_TEMPLATE]
    meta |= {"settings": dataclasses.asdict(cfg), "form": cfg.form, "template_hash": prompts.hash(templates[0]),
             "template_hashes": {t: prompts.hash(t) for t in templates}}
    write_output(args.out, verified, meta=meta, tables={"functions.parquet": functions, "cases.parquet": cases})
    write_json(args.metrics, metrics)
    print(f"autoif_verify: {metrics['constraints_verified']}/{metrics['constraints']} constraints verified, "
          f"{metrics['functions_kept']}/{metrics['samples']} functions kept; dropped {metrics['constraints_dropped']}")


if __name__ == "__main__":
    run_stage(main)
