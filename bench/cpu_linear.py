"""The linear layers' few-row products on this CPU (:mod:`evolforge.core.cpu_linear`): ``F.linear`` against the
weight-major form, per row count, on the shipped student's output projection (49,152 x 576, float32); then
greedy decoding of the whole model with the hf backend's loaded model, routed against not, per batch size.

    flock /work/heavy.lock python bench/cpu_linear.py [--model models/SmolLM2-135M-Instruct] [--json out.json]

Prints milliseconds per product and seconds per decode, each the best of ``--repeats`` alternating runs, the
ratio F.linear / weight-major, whether the probe routes on this CPU, and whether the decoded tokens are the same.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from evolforge.core import cpu_linear

PROMPTS = ["What is 12 times 7?", "Write a Python function that reverses a list.", "Name three colours.",
           "Explain photosynthesis in two sentences.", "Sort these numbers: 5, 3, 9, 1.",
           "Translate 'good morning' into French."]


def products(repeats: int) -> dict[str, dict[str, float]]:
    weight = torch.randn(49152, 576, generator=torch.Generator().manual_seed(0))
    out = {}
    for rows in range(1, 9):
        x = torch.randn(rows, 576)
        linear_ms = cpu_linear.best_seconds(lambda x=x: F.linear(x, weight), repeats) * 1e3
        major_ms = cpu_linear.best_seconds(lambda x=x: torch.mm(weight, x.T).T, repeats) * 1e3
        out[str(rows)] = {"linear_ms": round(linear_ms, 2), "weight_major_ms": round(major_ms, 2),
                          "ratio": round(linear_ms / major_ms, 2)}
        print(f"{rows} rows: F.linear {linear_ms:6.1f} ms, weight-major {major_ms:6.1f} ms ({linear_ms / major_ms:.2f}x)")
    return out


def decoding(model_dir: str, batches: list[int], tokens: int, repeats: int) -> dict[str, dict]:
    from evolforge.core.models import load_causal_lm, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir, device="cpu")
    out = {}
    for batch in batches:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in PROMPTS[:batch]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True)

        def decode(encoded=encoded):
            with torch.inference_mode():
                return model.generate(**encoded, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

        seconds, answers = {}, {}
        for _ in range(repeats):  # alternating, so that both see the machine's same moments
            for routed in (False, True):
                cpu_linear.route(model, on=routed)
                start = time.perf_counter()
                answers[routed] = decode()
                seconds[routed] = min(seconds.get(routed, float("inf")), time.perf_counter() - start)
        same = bool(torch.equal(answers[False], answers[True]))
        out[str(batch)] = {"linear_s": round(seconds[False], 2), "routed_s": round(seconds[True], 2),
                           "ratio": round(seconds[False] / seconds[True], 2), "same_tokens": same}
        print(f"batch {batch}: {tokens} tokens greedy, F.linear {seconds[False]:.2f} s, routed {seconds[True]:.2f} s "
              f"({seconds[False] / seconds[True]:.2f}x), same tokens: {same}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--batches", default="1,2,4,6,8")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    record = {"threads": torch.get_num_threads(), "products": products(args.repeats * 3)}
    record["probe_routes"] = cpu_linear.weight_major_faster()
    print(f"the probe routes {cpu_linear.ROWS.start}-{cpu_linear.ROWS.stop - 1} rows: {record['probe_routes']}")
    record["decoding"] = decoding(args.model, [int(b) for b in args.batches.split(",")], args.tokens, args.repeats)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
