"""diversity stage: instruction embeddings and minimum neighbour distance (MND).

Reads:  data/clean/ (data.chunk_rows rows at a time: docs/how-to/scale.md), params.yaml `diversity` (embedder kind),
        roles `embedder` (model, revision, dtype, device, batch_size), models/identity.json (the embedder's identity)
Writes: data/diversity/items.parquet (id, round, mnd, repeat_count), data/diversity/embeddings.npy
        (unit-normalised float32, one row per item in the table's order), metrics/diversity.json,
        metrics/plots/mnd_hist.json
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.diversity.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics", "--plots"])
    params = read_params(args.params)
    write(args, run(args.items, args.out, load_section(params, "diversity", DiversitySettings),
                    load_section(params, "data", DataSettings), load_role(params, "embedder")))


if __name__ == "__main__":
    run_stage(main)
