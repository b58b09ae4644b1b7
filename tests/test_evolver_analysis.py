"""Evolver analyses: top-token probabilities from a tiny real model; method lines and keyword counting."""

from __future__ import annotations

import pytest

from evolforge.config.loader import load_section
from evolforge.steps.evolver_analysis.settings import AnalysisSettings
import torch

from evolforge.steps.evolver_analysis.step import (histogram, keyword_key, method_keywords, method_lines,
                                              top_token_probs)
from evolforge.core.models import load_causal_lm, load_tokenizer
from evolforge.core.prompts import PromptLibrary
from evolforge.config.roles import Role
from evolforge.llm.cached import LLM
from evolforge.llm.backends.fake import FakeBackend


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    from tiny import build_random_llama, pseudo_words

    words = pseudo_words(120)
    texts = [" ".join(words[i:i + 12]) for i in range(0, 108)]  # a small corpus keeps tokenizer training quick
    path = build_random_llama(tmp_path_factory.mktemp("llama") / "m", vocab_size=300, hidden_size=32, num_layers=1,
                              num_heads=2, intermediate_size=64, texts=texts)
    return load_causal_lm(str(path), device="cpu"), load_tokenizer(str(path))


def test_top_token_probs_match_a_manual_greedy_loop(random_llama):
    model, tok = random_llama
    prompts = ["ba ka", "a much longer prompt so that the batch is padded on the left"]
    got = top_token_probs(model, tok, prompts, max_tokens=4, first_tokens=3, batch_size=2)
    for prompt, probs in zip(prompts, got):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        expected = []
        for _ in range(3):  # one prompt alone, no padding: the reference
            with torch.no_grad():
                p = torch.softmax(model(ids).logits[0, -1].float(), -1)
            expected.append(float(p.max()))
            ids = torch.cat([ids, p.argmax().view(1, 1)], dim=1)
        assert len(probs) == 3
        assert probs == pytest.approx(expected, abs=1e-4)
    assert all(0 < p <= 1 for row in got for p in row)


def test_histogram_covers_zero_to_one():
    rows = histogram([0.0, 0.05, 0.5, 0.99, 1.0], bins=10)
    assert [r["count"] for r in rows] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


@pytest.mark.parametrize("text, lines", [
    ("Step 1 #Methods List#:\n1. Add constraints\n2) Require reasoning\n- Use rare terms\nStep 2 #Plan#: x\n3. not me",
     ["Add constraints", "Require reasoning", "Use rare terms"]),
    ("Methods List:\n* Deepen the question\n\nstep 2 # plan # ...", ["Deepen the question"]),
    ("No structure at all", ["No structure at all"]),
    ("Step 2 #Plan#: only a plan", []),
])
def test_method_lines(text, lines):
    assert method_lines(text) == lines


def test_method_keywords_counts_distinct_normalised_keywords():
    evolver_answers = ["Step 1 #Methods List#:\n- Add constraints\n- Ask for steps\nStep 2 #Plan#: p",
                       "Step 1 #Methods List#:\n- Add a constraint\nStep 2 #Plan#: p", "Step 2 #Plan#: no methods listed"]
    answers = dict(zip(["p1", "p2", "p3"], evolver_answers))
    evolver = LLM(FakeBackend(lambda r: answers[r.messages[0][1]]), None,
                  role=Role(name="evolver", backend="hf", model="e", temperature=0.7))
    keywords = {"Add constraints": "Adding constraints.", "Ask for steps": "Step-by-step reasoning",
                "Add a constraint": "adding constraints"}
    judge_fake = FakeBackend(lambda r: keywords[r.messages[0][1].split("Method: ")[1].splitlines()[0]])
    judge = LLM(judge_fake, None, role=Role(name="judge", backend="hf", model="j"))
    out = method_keywords(evolver, judge, PromptLibrary(), ["p1", "p2", "p3"])
    assert out == {"answers": 3, "answers_with_methods": 2, "method_lines": 3, "distinct_keywords": 2,
                   "keywords": ["adding constraints", "step by step reasoning"]}
    assert {r.temperature for r in judge_fake.sent} == {0.0}
    assert keyword_key("\n  Rare-Words!  \nsecond line") == "rare words"


def test_settings():
    with pytest.raises(ValueError, match="first_tokens"):
        load_section({"evolver_analysis": {"first_tokens": 50, "max_tokens": 8}}, "evolver_analysis", AnalysisSettings)
    with pytest.raises(ValueError, match="unknown key"):
        load_section({"evolver_analysis": {"tokens": 5}}, "evolver_analysis", AnalysisSettings)
