"""select stage: choose the training set from the clean, scored, judged items and export it for SFT.
(The script is not called select.py: Python puts stages/ first on sys.path, and that name would
shadow the standard library's select module.)

Reads:  data/clean/ (deduplicated, decontaminated), data/judged/, data/scores/, data/diversity/ (items.parquet
        with id, mnd; embeddings.npy for select.diversity_threshold), data/verified/ (verify_* per item),
        params.yaml `select` (metric, top_fraction, threshold, ifd_filter, rounds, seed, min_loss_instruction,
        min_mnd, diversity_threshold, drop_wrong, min_confidence, near_duplicates, same_problem,
        same_problem_lineage) and `card`; for the dataset
        card, what the card flags give (--seed, --evolved, --responses, --pool, --dedup, --identities,
        --pool-metrics, --score-metrics; a flag left out is a part the card leaves out): the card quotes the
        settings those outputs recorded, no other params section
Writes: data/selected/items.parquet (lineage + text + every metric), excluded.parquet (id, round,
        skip_reason for every item not chosen: a guard such as empty_response, a floor, the budget; and
        same_problem_as, the selected item a same-problem repeat repeats),
        train.jsonl (TRL conversational prompt/completion), train_alpaca.json (Alpaca), meta.json,
        README.md + data/train-*.parquet (a Hugging Face dataset card and a `datasets`-loadable copy);
        metrics/select.json (items removed per filter, diversity of the selected set, its distinct problems)
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.steps.common.layout import Layout
from evolforge.steps.select.card import card_params
from evolforge.steps.select.settings import SelectSettings
from evolforge.steps.select.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--items", "--judged", "--scores", "--diversity"], writes=["--out", "--metrics"],
                     optional={"--verified": None,  # a selection without the verify stage's verdicts
                               "--seed": None, "--evolved": None, "--responses": None, "--pool": None,
                               "--dedup": None, "--identities": None, "--pool-metrics": None,
                               "--score-metrics": None})  # the card's sources
    card, params = Layout.from_flags(vars(args), clean="items"), read_params(args.params)
    cfg, data = load_section(params, "select", SelectSettings), load_section(params, "data", DataSettings)
    write(args, run(args.items, args.judged, args.scores, args.diversity, cfg, data, card_params(params),
                    args.verified, card))


if __name__ == "__main__":
    run_stage(main)
