"""dedup stage: drop near-duplicate items (MinHash LSH over normalised instruction + input), before judging.

Reads:  data/pool/ (the scenario's items: every answered round, and the seeds when respond.include_seed),
        params.yaml `dedup` (threshold, shingle_size, num_perm, seed), `data.chunk_rows`
Writes: data/dedup/items.parquet (the kept items, with data/pool's columns), data/dedup/removed.parquet (the
        duplicates, plus duplicate_of = the id of the kept item each duplicates, duplicate_similarity = exact
        Jaccard, dedup_reason = exact_duplicate | near_duplicate), meta.json; metrics/dedup.json (removed per
        round, exact vs near, peak_rss_mib)
The table is read and written data.chunk_rows rows at a time (docs/how-to/scale.md): the same output for any value.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.steps.dedup.settings import DedupSettings
from evolforge.steps.dedup.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics"])
    params = read_params(args.params)
    write(args, run(args.items, args.out, load_section(params, "dedup", DedupSettings),
                    load_section(params, "data", DataSettings)))


if __name__ == "__main__":
    run_stage(main)
