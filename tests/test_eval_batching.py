"""The hf backend's generation batches across tasks (eval/batching.py): the harness's texts, in fewer batches.

The suite's tiny model generates greedily for requests of three "tasks" whose stop sequences differ; the texts
must be those lm-evaluation-harness's own hf backend gives (a batch per task's arguments), each cut at its own
stop sequences, while requests of another sampling setting keep batches of their own.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from evolforge.config.training import EvaluateSettings  # noqa: E402
from evolforge.eval.batching import CrossTaskHFLM, RowStops  # noqa: E402
from evolforge.eval.harness import _harness_model, model_args  # noqa: E402

PROMPTS = ["Write a sentence about the sea.", "Name three colours.", "What is 12 times 3?",
           "Reverse the words of a sentence.", "Explain what a list is.", "Add 5 and 7."]
GREEDY = [{"until": ["e"], "max_gen_toks": 12, "do_sample": False},  # stops early in most rows
          {"until": ["\n", "Question:"], "max_gen_toks": 12, "do_sample": False},
          {"until": [], "max_gen_toks": 12, "do_sample": False}]  # the end-of-text token only


def requests(kinds: list[dict]) -> list[Instance]:
    return [Instance("generate_until", {}, (prompt, dict(kinds[i % len(kinds)])), i,
                     metadata=(f"task{i % len(kinds)}", i, 1)) for i, prompt in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def lm(tiny_model) -> CrossTaskHFLM:
    return CrossTaskHFLM.create_from_arg_obj({"pretrained": str(tiny_model), "device": "cpu"}, {"batch_size": 8})


def counting_generate(lm, monkeypatch) -> list[int]:
    """The rows of each batch the model generates for, in order."""
    sizes: list[int] = []
    generate = lm.model.generate

    def counted(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", counted)
    return sizes


def test_batches_across_tasks_give_the_harness_texts_in_one_batch(lm, monkeypatch):
    sizes = counting_generate(lm, monkeypatch)
    theirs = HFLM.generate_until(lm, requests(GREEDY), True)
    assert sizes == [2, 2, 2]  # the harness: a batch per task's arguments
    sizes.clear()
    ours = lm.generate_until(requests(GREEDY), True)
    assert sizes == [6]
    assert ours == theirs
    assert all("e" not in text for text in ours[0::3]) and all("\n" not in text for text in ours[1::3])


def test_a_batch_holds_at_most_batch_size_rows_and_sampling_keeps_its_own(lm, monkeypatch):
    sizes = counting_generate(lm, monkeypatch)
    sampled = {"until": ["\n"], "max_gen_toks": 4, "do_sample": True, "temperature": 0.7}
    lm.batch_size_per_gpu = 3
    try:
        texts = lm.generate_until(requests([GREEDY[0], GREEDY[1], sampled]), True)
    finally:
        lm.batch_size_per_gpu = 8
    assert sorted(sizes) == [1, 2, 3] and len(texts) == len(PROMPTS)  # 4 greedy rows: 3 + 1; 2 sampled: 2


def test_row_stops_count_only_generated_text_and_stay_done(lm):
    tokenizer = lm.tokenizer
    prompt = tokenizer(["stop here", "stop here"], return_tensors="pt")["input_ids"]
    stops = RowStops(tokenizer, [["stop"], []], prompt.shape[1])
    assert stops(prompt, None).tolist() == [False, False]  # the prompt's "stop" does not count
    said = tokenizer(" we stop", add_special_tokens=False, return_tensors="pt")["input_ids"]
    after = torch.cat([prompt, said.expand(2, -1)], dim=1)
    assert stops(after, None).tolist() == [True, False]  # a row without stop sequences waits for end of text
    more = tokenizer(" and go", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert stops(torch.cat([after, more.expand(2, -1)], dim=1), None).tolist() == [True, False]


@pytest.mark.parametrize("across", [True, False])
def test_the_setting_picks_the_model_class(tiny_model, across):
    settings = EvaluateSettings(backend="hf", device="cpu", batch_size=4, cross_task_batches=across)
    made = _harness_model(settings, model_args(str(tiny_model), "hf", dtype="auto", device="cpu"), "cpu")
    assert type(made) is (CrossTaskHFLM if across else HFLM) and made.batch_size == 4
