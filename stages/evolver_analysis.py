"""evolver_analysis (optional, run by hand: not a dvc.yaml stage): the SLM paper's two evolver analyses on the same seeds, for roles.evolver
and any models listed in `evolver_analysis.evolvers`.

- top-token probability of the first generated tokens of greedy Evol-Instruct evolutions (paper Fig. 5);
- distinct method keywords in the Step-1 methods lists of the Auto Evol-Instruct initial method (paper §3.3),
  keywords extracted by the judge role.

Reads:  data/seed/, params.yaml `evolver_analysis`, `evolve.breadth`, `optimize.initial_method`, roles `evolver`
        and `judge`, prompts/evolve, prompts/optimize, prompts/judge/method_keyword.j2
Writes: metrics/evolver_analysis.json (per evolver: mean / median top-token probability, distinct keywords),
        metrics/plots/evolver_top_prob.json (share per probability bin and evolver)
"""

import argparse
import dataclasses
import statistics

from evolforge.steps.evolve import assign_methods, evolving_prompt
from evolforge.steps.evolver_analysis import histogram, method_keywords, top_token_probs
from evolforge.steps.optimize import initial_method_text
from evolforge.core.cache import open_cache
from evolforge.core.models import load_causal_lm, load_tokenizer
from evolforge.core.params import load_params, load_role, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import read_table, write_json
from evolforge.core.errors import run_stage
from evolforge.llm import open_llm, open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", default="data/seed")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--metrics", default="metrics/evolver_analysis.json")
    ap.add_argument("--plot", default="metrics/plots/evolver_top_prob.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "evolver_analysis")
    table = read_table(args.seed).head(cfg.items)
    seeds = table["instruction"].to_list()
    prompts = PromptLibrary(args.prompts)
    # Evol-Instruct prompts with the paper's method rotation (round 1), and the Auto Evol-Instruct initial method
    methods = assign_methods(table["root_id"].to_list(), 1, "round_robin", load_section(params, "evolve").breadth, cfg.seed)
    evol_prompts = [evolving_prompt(prompts, m, q) for m, q in zip(methods, seeds)]
    method_text = initial_method_text(prompts, load_section(params, "optimize").initial_method)
    auto_prompts = [evolving_prompt(prompts, "auto", q, method_text) for q in seeds]

    cache = open_cache(params)
    judge = open_role(params, "judge", cache)
    evolver = load_role(params, "evolver")
    roles = [evolver] + [dataclasses.replace(evolver, name=f"evolver_{i + 1}", model=m, revision=None)
                         for i, m in enumerate(cfg.evolvers or [])]
    metrics, plot = {"items": len(seeds), "first_tokens": cfg.first_tokens, "evolvers": {}}, []
    for role in roles:
        tokenizer = load_tokenizer(role.model, role.revision)
        model = load_causal_lm(role.model, role.revision, dtype=role.dtype, device=role.device)
        probs = [p for row in top_token_probs(model, tokenizer, evol_prompts, cfg.max_tokens, cfg.first_tokens) for p in row]
        del model
        # the paper samples the Auto Evol prompt at 0.7 / 0.95 for the methods lists
        sampler = open_llm(dataclasses.replace(role, temperature=0.7, top_p=0.95), cache)
        keywords = method_keywords(sampler, judge, prompts, auto_prompts, cfg.keyword_max_tokens)
        metrics["evolvers"][role.model] = {
            "tokens": len(probs), "mean_top_prob": statistics.fmean(probs) if probs else None,
            "median_top_prob": statistics.median(probs) if probs else None,
            "share_above_0_9": sum(p > 0.9 for p in probs) / len(probs) if probs else None, **keywords}
        plot += [{"evolver": role.model, **row} for row in histogram(probs, cfg.bins)]
    write_json(args.metrics, metrics)
    write_json(args.plot, plot)
    for name, m in metrics["evolvers"].items():
        print(f"evolver_analysis: {name}: mean top-token probability {m['mean_top_prob']}, {m['distinct_keywords']} distinct keywords")


if __name__ == "__main__":
    run_stage(main)
