"""compare stage: win-tie-lose of this experiment's fine-tuned model against the base (or another model),
judged on a shared instruction set (the SLM paper's AlpacaFarm study, offline on a small shipped list).

Reads:  --instructions (a seed-format file: instruction, input), --model (models/sft: a model or LoRA adapter
        folder), params.yaml `compare` (against, limit, both_orders, parse, max_tokens, judge_max_tokens),
        roles `base` (the other side unless `compare.against` names a model) and `judge`, prompts/respond/response.j2,
        prompts/judge/win_tie_lose.j2
Writes: data/compare/items.parquet (both answers, raw judge answers, verdicts), meta.json;
        metrics/compare.json (win / tie / lose counts and rates from the fine-tuned model's side)
"""

import argparse
import dataclasses

from evolforge.build.compare import JUDGE_TEMPLATE, counts, judge_pairs
from evolforge.build.respond import RESPONSE_TEMPLATE, respond
from evolforge.build.seed import build_seed
from evolforge.core.cache import open_cache
from evolforge.core.params import load_params, load_role, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import write_json, write_output
from evolforge.core.errors import run_stage
from evolforge.llm import open_llm, open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--instructions", default="data/seeds/compare.jsonl")
    ap.add_argument("--model", default="models/sft")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", default="data/compare")
    ap.add_argument("--metrics", default="metrics/compare.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "compare")
    items = build_seed(args.instructions, limit=cfg.limit, seed=cfg.seed)[0]
    prompts = PromptLibrary(args.prompts)
    cache = open_cache(params)
    base = load_role(params, "base")
    # both sides answer greedily through the hf/vllm backend of roles.base, one pointed at each model
    answer_role = dataclasses.replace(base, temperature=0.0, max_tokens=cfg.max_tokens)
    tuned = open_llm(dataclasses.replace(answer_role, name="compare_tuned", model=args.model, revision=None), cache)
    other_model = base.model if cfg.against == "base" else cfg.against
    other = open_llm(dataclasses.replace(answer_role, name="compare_other", model=other_model,
                                         revision=base.revision if cfg.against == "base" else None), cache)
    instructions, inputs = items["instruction"].to_list(), items["input"].to_list()
    answers_a = respond(tuned, prompts, instructions, inputs, desc="answers: tuned")
    answers_b = respond(other, prompts, instructions, inputs, desc="answers: other")

    judge = open_role(params, "judge", cache)
    queries = [q + "\n" + x if x else q for q, x in zip(instructions, inputs)]  # the reference code's user query
    verdicts = judge_pairs(judge, prompts, queries, answers_a, answers_b, both_orders=cfg.both_orders, rule=cfg.parse,
                           max_tokens=cfg.judge_max_tokens)
    table = items.select("id", "instruction", "input").with_columns(answer_tuned=answers_a, answer_other=answers_b).hstack(verdicts)

    metrics = counts(table["verdict"].to_list()) | {
        "both_orders": cfg.both_orders, "parse": cfg.parse, "against": cfg.against,
        "calls": {n: llm.stats["calls"] for n, llm in (("tuned", tuned), ("other", other), ("judge", judge))},
        "cache_hits": {n: llm.stats["cache_hits"] for n, llm in (("tuned", tuned), ("other", other), ("judge", judge))}}
    meta = {"tuned": tuned.label, "other": other.label, "judge": judge.label, "settings": dataclasses.asdict(cfg),
            "template_hashes": {t: prompts.hash(t) for t in (RESPONSE_TEMPLATE, JUDGE_TEMPLATE)}}
    write_output(args.out, table, meta=meta)
    write_json(args.metrics, metrics)
    print(f"compare: tuned vs {cfg.against}: {metrics['win']} win / {metrics['tie']} tie / {metrics['lose']} lose")


if __name__ == "__main__":
    run_stage(main)
