"""score stage: IFD and IC-IFD losses from the scorer model, and diversity (minimum neighbour distance).

Reads:  data/responses/, params.yaml `score` (template, boundary, max_length, cherry_truncation,
        max_batch_tokens: see evolforge.score.ifd.ScoreConfig; embedder, embedder_model),
        roles `scorer` (model, revision, dtype, device, batch_size)
Writes: data/scores/items.parquet (id, round, loss_* in nats, ifd, ic_ifd, token counts, mnd, repeat_count),
        metrics/score.json (means, scorer_path), metrics/plots/{ifd,ic_ifd,mnd}_hist.json
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from evolforge.core import validation
from evolforge.core.params import load_params, load_role, section
from evolforge.score.diversity import embed_texts, item_texts, mean_pooled_embeddings, neighbor_stats
from evolforge.core.models import model_identity
from evolforge.core.records import read_table, write_json, write_output
from evolforge.score.ifd import ScoreConfig, ifd_scores, load_scorer


def histogram(values: pl.Series, bins: int = 20) -> list[dict]:
    x = values.drop_nulls().drop_nans().to_numpy()
    if x.size == 0:
        return []
    counts, edges = np.histogram(x, bins=bins)
    return [{"bin_low": float(lo), "bin_high": float(hi), "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--responses", default="data/responses")
    ap.add_argument("--out", default="data/scores")
    ap.add_argument("--metrics", default="metrics/score.json")
    ap.add_argument("--plots", default="metrics/plots")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, "score")
    role = load_role(params, "scorer")
    if role.backend != "hf":
        raise SystemExit("params.yaml roles.scorer.backend: scoring needs logits, so it runs in-process (hf)")
    items = read_table(args.responses)
    validation.check(items, validation.required_columns(["id", "round", "instruction", "input", "output"]) + validation.unique("id"), args.responses)

    model, tokenizer = load_scorer(role.model, role.revision, dtype=role.dtype, device=role.device)
    # the embedder keys belong to the diversity step; every other key is checked by ScoreConfig
    scoring = ScoreConfig.from_params({k: v for k, v in cfg.items() if k not in ("embedder", "embedder_model")})
    scores = ifd_scores(model, tokenizer, items["instruction"].to_list(), items["input"].to_list(), items["output"].to_list(),
                        **dataclasses.asdict(scoring), batch_size=role.batch_size)
    embedder = cfg.get("embedder", "causal-lm-mean")
    texts = item_texts(items["instruction"].to_list(), items["input"].to_list())
    embedder_model = cfg.get("embedder_model") or role.model
    if embedder == "causal-lm-mean" and embedder_model == role.model:
        # the scorer model is already loaded: no second copy
        embeddings = mean_pooled_embeddings(model, tokenizer, texts, batch_size=role.batch_size, progress=True)
    else:
        embeddings = embed_texts(texts, embedder_model, kind=embedder, dtype=role.dtype, device=role.device)
    neighbours = neighbor_stats(embeddings)
    table = pl.concat([items.select("id", "round"), scores], how="horizontal").with_columns(
        mnd=pl.Series(neighbours.min_distance, dtype=pl.Float64), repeat_count=pl.Series(neighbours.repeat_count, dtype=pl.Int64))
    validation.check(table, validation.unique("id"), args.out)

    def mean(col: str) -> float | None:
        s = table[col].drop_nulls().drop_nans()
        return float(s.mean()) if s.len() else None

    metrics = {"items": table.height, "template": cfg.get("template", "raw"), "scorer": role.model,
               "scorer_path": str(Path(role.model).resolve()) if Path(role.model).is_dir() else role.model,
               "embedder": embedder, "null_scores": int(table["ic_ifd"].is_null().sum()),
               **{f"mean_{c}": mean(c) for c in ("loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd", "mnd")},
               "share_ifd_above_1": float((table["ifd"] > 1).sum() / max(1, table["ifd"].drop_nulls().len()))}
    write_output(args.out, table, meta={"scorer": model_identity(role.model, role.revision), "params": cfg})
    write_json(args.metrics, metrics)
    for col in ("ifd", "ic_ifd", "mnd"):
        write_json(Path(args.plots) / f"{col}_hist.json", histogram(table[col]))
    print(f"score: {table.height} items, mean IFD {metrics['mean_ifd']}, mean IC-IFD {metrics['mean_ic_ifd']}")


if __name__ == "__main__":
    main()
