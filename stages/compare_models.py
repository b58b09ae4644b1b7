"""compare stage: win-tie-lose of this experiment's fine-tuned model against the base (or another model),
judged on a shared instruction set (the SLM paper's AlpacaFarm study, offline on a small shipped list).

Reads:  --instructions (a seed-format file: instruction, input), --model (models/sft: a model or LoRA adapter
        folder), params.yaml `compare` (against, limit, both_orders, parse, max_tokens, judge_max_tokens),
        roles `base` (the other side unless `compare.against` names a model) and `judge`, prompts/respond/response.j2,
        prompts/judge/win_tie_lose.j2
Writes: data/compare/items.parquet (both answers and finish reasons, raw judge answers, verdicts; a pair with a
        failed answer is not judged and keeps failure_reason), meta.json;
        metrics/compare.json (win / tie / lose counts and rates from the fine-tuned model's side, unjudged)
"""

import argparse
import dataclasses

import polars as pl

from evolforge.steps.compare import JUDGE_TEMPLATE, counts, judge_pairs
from evolforge.steps.respond import RESPONSE_TEMPLATE, respond
from evolforge.steps.seed import build_seed
from evolforge.core.cache import open_cache
from evolforge.core.params import load_params, load_role, load_section
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import write_json, write_output
from evolforge.core.errors import run_stage
from evolforge.llm import open_llm, open_role


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--instructions", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
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
    done_a = respond(tuned, prompts, instructions, inputs, desc="answers: tuned")
    done_b = respond(other, prompts, instructions, inputs, desc="answers: other")
    # a pair is judged only when both models answered; a failed call leaves that pair unjudged, with its reason
    judged = [i for i, (a, b) in enumerate(zip(done_a, done_b)) if not a.failed and not b.failed]

    judge = open_role(params, "judge", cache)
    queries = [q + "\n" + x if x else q for q, x in zip(instructions, inputs)]  # the reference code's user query
    verdicts = judge_pairs(judge, prompts, [queries[i] for i in judged], [done_a[i].text for i in judged],
                           [done_b[i].text for i in judged], both_orders=cfg.both_orders, rule=cfg.parse,
                           max_tokens=cfg.judge_max_tokens)
    position = {i: row for row, i in enumerate(judged)}
    verdict_rows = [verdicts.row(position[i], named=True) if i in position else dict.fromkeys(verdicts.columns)
                    for i in range(items.height)]
    failure = [None if i in position else "no_answer: " + ", ".join(
        f"{side} {c.failure_reason}" for side, c in (("tuned", done_a[i]), ("other", done_b[i])) if c.failed)
        for i in range(items.height)]
    table = items.select("id", "instruction", "input").with_columns(
        answer_tuned=pl.Series([c.text for c in done_a], dtype=pl.String),
        answer_other=pl.Series([c.text for c in done_b], dtype=pl.String),
        finish_tuned=pl.Series([c.finish_reason for c in done_a], dtype=pl.String),
        finish_other=pl.Series([c.finish_reason for c in done_b], dtype=pl.String),
        failure_reason=pl.Series(failure, dtype=pl.String),
    ).hstack(pl.DataFrame(verdict_rows, schema=verdicts.schema))

    metrics = counts(table["verdict"].drop_nulls().to_list()) | {"unjudged": items.height - len(judged),
        "both_orders": cfg.both_orders, "parse": cfg.parse, "against": cfg.against,
        "calls": {n: llm.stats["calls"] for n, llm in (("tuned", tuned), ("other", other), ("judge", judge))},
        "cache_hits": {n: llm.stats["cache_hits"] for n, llm in (("tuned", tuned), ("other", other), ("judge", judge))},
        "llm": {n: llm.stats for n, llm in (("tuned", tuned), ("other", other), ("judge", judge))}}
    meta = {"tuned": tuned.label, "other": other.label, "judge": judge.label, "settings": dataclasses.asdict(cfg),
            "template_hashes": {t: prompts.hash(t) for t in (RESPONSE_TEMPLATE, JUDGE_TEMPLATE)}}
    write_output(args.out, table, meta=meta)
    write_json(args.metrics, metrics)
    print(f"compare: tuned vs {cfg.against}: {metrics['win']} win / {metrics['tie']} tie / {metrics['lose']} lose")


if __name__ == "__main__":
    run_stage(main)
