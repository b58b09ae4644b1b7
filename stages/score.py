"""score stage: IFD and IC-IFD losses from the scorer model.

Reads:  data/clean/, params.yaml `score` (template, boundary, max_length, cherry_truncation, max_batch_tokens),
        roles `scorer` (model, revision, dtype, device, batch_size), models/identity.json (the scorer's identity)
Writes: data/scores/items.parquet (id, round, loss_* in nats, ifd, ic_ifd, token counts),
        metrics/score.json (means), metrics/plots/{ifd,ic_ifd}_hist.json
Stored precision (score/precision.py, docs/scoring.md): losses at 4 significant digits, IFD / IC-IFD
recomputed from them and the means at 6, so another CPU's last-bit differences do not change the hashes.
"""

import argparse
import dataclasses
from pathlib import Path

import polars as pl

from evolforge.core import validation
from evolforge.core.params import load_params, load_role, load_section
from evolforge.score.histogram import histogram
from evolforge.core.records import read_table, write_json, write_output
from evolforge.core.stream import peak_rss_mib
from evolforge.llm import recorded_identity
from evolforge.score.ifd import ifd_scores, load_scorer
from evolforge.score.precision import RATIO_DIGITS, significant, stored_scores
from evolforge.core.errors import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--items", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--plots", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = load_section(params, "score")
    role = load_role(params, "scorer")
    if role.backend != "hf":
        raise SystemExit("params.yaml roles.scorer.backend: scoring needs logits, so it runs in-process (hf)")
    items = read_table(args.items)
    validation.check(items, validation.item_columns(["id", "round", "instruction", "input", "output"]) + validation.unique("id"), args.items)

    model, tokenizer = load_scorer(role.model, role.revision, dtype=role.dtype, device=role.device)
    scores = ifd_scores(model, tokenizer, items["instruction"].to_list(), items["input"].to_list(), items["output"].to_list(),
                        **dataclasses.asdict(cfg), batch_size=role.batch_size)
    table = pl.concat([items.select("id", "round"), stored_scores(scores)], how="horizontal")
    validation.check(table, validation.unique("id"), args.out)

    def mean(col: str) -> float | None:
        s = table[col].drop_nulls().drop_nans()
        return significant(float(s.mean()), RATIO_DIGITS) if s.len() else None

    metrics = {"items": table.height, "template": cfg.template, "scorer": role.model,
               "null_scores": int(table["ic_ifd"].is_null().sum()),
               **{f"mean_{c}": mean(c) for c in ("loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd")},
               "share_ifd_above_1": float((table["ifd"] > 1).sum() / max(1, table["ifd"].drop_nulls().len()))}
    write_output(args.out, table, meta={"scorer": role.model, "scorer_identity": recorded_identity(role), "params": dataclasses.asdict(cfg)})
    write_json(args.metrics, {**metrics, "peak_rss_mib": peak_rss_mib()})  # docs/scale.md
    for col in ("ifd", "ic_ifd"):
        write_json(Path(args.plots) / f"{col}_hist.json", histogram(table[col].to_list()))
    print(f"score: {table.height} items, mean IFD {metrics['mean_ifd']}, mean IC-IFD {metrics['mean_ic_ifd']}")


if __name__ == "__main__":
    run_stage(main)
