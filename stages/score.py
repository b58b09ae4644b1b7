"""score stage: IFD and IC-IFD losses from the scorer model.

Reads:  data/clean/ (data.chunk_rows rows at a time: docs/how-to/scale.md), params.yaml `score` (template, boundary,
max_length, cherry_truncation, max_batch_tokens),
        roles `scorer` (model, revision, dtype, device, batch_size), models/identity.json (the scorer's identity)
Writes: data/scores/items.parquet (id, round, loss_* in nats, ifd, ic_ifd, token counts),
        metrics/score.json (means), metrics/plots/{ifd,ic_ifd}_hist.json
Stored precision (score/precision.py, docs/explanation/scoring.md): losses at 4 significant digits, IFD / IC-IFD
recomputed from them and the means at 6, so another CPU's last-bit differences do not change the hashes.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.steps.score.settings import ScoreSettings
from evolforge.steps.score.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items"], writes=["--out", "--metrics", "--plots"])
    params = read_params(args.params)
    cfg = load_section(params, "score", ScoreSettings)
    scorer = load_role(params, "scorer")  # a backend that cannot serve the scorer is refused there (BackendSpec.roles)
    write(args, run(args.items, args.out, cfg, scorer, load_section(params, "data", DataSettings)))


if __name__ == "__main__":
    run_stage(main)
