"""select stage: choose the training set from the clean, scored, judged items and export it for SFT.
(The script is not called select.py: Python puts stages/ first on sys.path, and that name would
shadow the standard library's select module.)

Reads:  data/clean/ (deduplicated, decontaminated), data/judged/, data/scores/, data/diversity/ (items.parquet
        with id, mnd; embeddings.npy for select.diversity_threshold), data/verified/ (verify_* per item),
        params.yaml `select` (metric, top_fraction, threshold, ifd_filter, rounds, seed, min_loss_instruction,
        min_mnd, diversity_threshold, drop_wrong, min_confidence, near_duplicates) and `card`; data/seed,
        data/evolved, models/identity.json for the dataset card
Writes: data/selected/items.parquet (lineage + text + every metric), excluded.parquet (id, round,
        skip_reason for every item not chosen: a guard such as empty_response, a floor, the budget),
        train.jsonl (TRL conversational prompt/completion), train_alpaca.json (Alpaca), meta.json,
        README.md + data/train-*.parquet (a Hugging Face dataset card and a `datasets`-loadable copy);
        metrics/select.json (items removed per filter, diversity of the selected set)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.loader import read_params
from evolforge.steps.select.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items", "--judged", "--scores", "--diversity"], writes=["--out", "--metrics"],
                     optional={"--verified": None})  # a selection without the verify stage's verdicts
    write(args, run(args.items, args.judged, args.scores, args.diversity, read_params(args.params), args.verified))


if __name__ == "__main__":
    run_stage(main)
