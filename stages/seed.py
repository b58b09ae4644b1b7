"""seed stage: normalise the seed source into data/seed/.

Reads:  params.yaml `seed` (source, format, fields, config, split, revision, limit, seed); the source file
Writes: data/seed/items.parquet (the sample: seed.limit items), all_seeds.parquet (every seed before the sample:
        Auto Evol-Instruct's development set and mini-batches), duplicates.parquet (each dropped duplicate and the
        row kept instead), meta.json; metrics/seed.json (counts, and the source file's sha256)
Rules for the source (what is refused and why): docs/how-to/seeds.md.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import load_section, read_params
from evolforge.steps.seed.settings import SeedSettings
from evolforge.steps.seed.step import run


def main() -> None:
    args = arguments(__doc__, writes=["--out", "--metrics"])
    write(args, run(load_section(read_params(args.params), "seed", SeedSettings)))


if __name__ == "__main__":
    run_stage(main)
