"""tiny_probe stage: how often each stage's parser accepts the tiny model's greedy answers.

Reads:  models/tiny/, prompts/, the demo seeds
Writes: metrics/tiny_probe.json ({format: share of answers parsed}); between 0 and 1 means the offline
        pipeline walks both the success and the failure path of that format
"""

import argparse

from evolforge.probe import probe
from evolforge.records import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/tiny")
    ap.add_argument("--seeds", default="data/seeds/demo.jsonl")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--metrics", default="metrics/tiny_probe.json")
    args = ap.parse_args()

    rates = probe(args.model, args.prompts, args.seeds)
    write_json(args.metrics, rates)
    print(f"tiny model parse rates: {rates}")


if __name__ == "__main__":
    main()
