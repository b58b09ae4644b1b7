"""judge stage: difficulty level (5 labels) and difficulty score (0-100) for every answered item.

Reads:  data/clean/ (the deduplicated, decontaminated answers, data.chunk_rows at a time), params.yaml `judge`
        (score_prompt, max_tokens, constrain), roles `judge`
Writes: data/judged/items.parquet (id + difficulty columns), metrics/judge.json,
        metrics/plots/difficulty_levels.json (level shares per round)
"""

import argparse

import polars as pl

from evolforge.core import validation
from evolforge.core.cache import open_cache
from evolforge.llm import open_role
from evolforge.core.params import load_params, load_section
from evolforge.steps.judge import LEVEL_TEMPLATE, LEVELS, SCORE_TEMPLATES, judge, level_distribution
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import write_json, write_output
from evolforge.core.stream import check_chunks, iter_chunks, peak_rss_mib, table_file, table_schema
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--plot", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "judge")
    source, rows = table_file(args.items), load_section(params, "data").chunk_rows
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), rows)
    prompts = PromptLibrary(args.prompts)
    llm = open_role(params, "judge", open_cache(params))
    variant = cfg.score_prompt
    # the item texts are read data.chunk_rows at a time and judged chunk by chunk (each item's answers are
    # its own); only the judged columns, without the texts, are held for the output (docs/scale.md)
    def judged(chunk: pl.DataFrame) -> pl.DataFrame:
        return judge(chunk, llm, prompts, score_prompt=variant, max_tokens=cfg.max_tokens, constrain=cfg.constrain,
                     probabilities=cfg.probabilities).select(
            "id", "round", "difficulty_level", "difficulty_level_reason", "difficulty_level_raw", "difficulty_score",
            "difficulty_score_reason", "difficulty_score_raw", "score_prompt", "judge_constrained",
            "difficulty_expected", "level_expected")

    parts = [judged(chunk) for chunk in iter_chunks(source, rows)]
    table = pl.concat(parts) if parts else judged(pl.DataFrame(schema=table_schema(source)))  # no rows: the columns
    validation.check(table.filter(pl.col("difficulty_score").is_not_null()), validation.between("difficulty_score", 0, 100), args.out)

    per_round = {str(r): {"mean_difficulty_score": part["difficulty_score"].mean(),
                          "mean_difficulty_expected": part["difficulty_expected"].mean(),
                          "mean_level_expected": part["level_expected"].mean(),
                          "levels": {l: int((part["difficulty_level"] == l).sum()) for l in LEVELS}}
                 for (r,), part in table.group_by(["round"], maintain_order=True)}
    metrics = {"items": table.height, "score_prompt": variant, "constrained": cfg.constrain,
               "mean_difficulty_score": table["difficulty_score"].mean(), "probabilities": cfg.probabilities,
               "mean_difficulty_expected": table["difficulty_expected"].mean(),
               "level_unparsed": int(table["difficulty_level"].is_null().sum()),
               "score_unparsed": int(table["difficulty_score"].is_null().sum()),
               "per_round": per_round, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "llm": {"judge": llm.stats}}  # tokens, failures and cost of the calls
    meta = {"model": llm.label, "model_identity": llm.identity, "score_prompt": variant, "constrained": cfg.constrain,
            "template_hashes": {LEVEL_TEMPLATE: prompts.hash(LEVEL_TEMPLATE), SCORE_TEMPLATES[variant]: prompts.hash(SCORE_TEMPLATES[variant])}}
    write_output(args.out, table, meta=meta)
    write_json(args.metrics, {**metrics, "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    write_json(args.plot, level_distribution(table))
    print(f"judge: {table.height} items, {metrics['level_unparsed']} levels and {metrics['score_unparsed']} scores unparsed")


if __name__ == "__main__":
    run_stage(main)
