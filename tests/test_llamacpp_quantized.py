"""The llamacpp backend on quantized weights: the tests' tiny Llama written as GGUF in Q8_0 and Q4_0 beside
float32 (tests/tiny_gguf.py). Only quantized weights take llama.cpp's special CPU kernels (the CPU-repack ones,
and AMX where a build has them), and only for batches of many rows, so these run prompts of 64+ tokens in
several sequences of one batch and compare with the float32 model, and with the same file loaded on the plain
kernels (``extra_bufts`` off).

Tolerances, in nats of next-token log-probability (the tiny model's vocabulary is about 2,000 tokens), about
three times what was measured (Q8_0 0.009, Q4_0 0.095, on an Intel Xeon with AVX-512, Nov 2026): Q8_0 keeps 8
bits a weight and is within 0.03 of float32 at every position and token; Q4_0 keeps 4 and is within 0.25; the
two kernels on one file differ by rounding only (measured 0 for Q8_0, 0.004 for Q4_0, whose CPU-repack kernels
ran; within 0.01). Greedy tokens: where float32's first choice leads its second by more than twice the
tolerance the quantized model must choose it too, and it must choose float32's token at 90 % of the positions
(Q8_0) or 75 % (Q4_0; the briefly trained tiny model's first two choices are often within 0.1 nats).
"""

from __future__ import annotations

import pytest
import torch

from evolforge.llm.backends.llamacpp.context import LlamaCppContext
from evolforge.llm.requests import ChatRequest

TOLERANCE = {"Q8_0": 0.03, "Q4_0": 0.25}  # nats, max |log p(quantized) - log p(float32)| over positions and tokens
AGREE = {"Q8_0": 0.9, "Q4_0": 0.75}  # the share of positions where the greedy token is float32's
SEQUENCES = 4
PROMPT_TOKENS = 72  # each sequence's prompt: over 64, one batch of that many rows
FED = 6  # tokens appended to every sequence in one batch after its prompt (float32's greedy ones)


@pytest.fixture(scope="module")
def folders(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return {quant: write_tiny_gguf(tiny_model, tmp_path_factory.mktemp(f"tiny-gguf-{quant}"), quant=quant)
            for quant in ("F32", "Q8_0", "Q4_0")}


def prompts(vocab: int) -> list[list[int]]:
    """Four prompts of 72 tokens sharing none of their first tokens (any ids: the kernels are what is tested)."""
    return [[(11 + 97 * seq + 131 * i) % vocab for i in range(PROMPT_TOKENS)] for seq in range(SEQUENCES)]


def log_probs(folder, fed: list[list[int]] | None = None, extra_bufts: bool = True):
    """Per sequence, the next-token log-probabilities after its prompt and after each fed token: the prompts
    evaluated one sequence a batch, the fed tokens of all four in one batch. With ``fed`` None, float32's
    greedy continuation is found and fed (returned too)."""
    cache = LlamaCppContext(next(folder.glob("*.gguf")), tokens=1024, threads=1, extra_bufts=extra_bufts)
    try:
        rows = [[cache.prefill(seq, prompt, reuse=False)] for seq, prompt in enumerate(prompts(cache.n_vocab))]
        if fed is None:  # float32's greedy tokens, one step at a time
            fed = [[] for _ in rows]
            for _ in range(FED):
                steps = cache.step([(int(r[-1].argmax()), seq) for seq, r in enumerate(rows)])
                for seq, row in enumerate(steps):
                    fed[seq].append(int(rows[seq][-1].argmax()))
                    rows[seq].append(row)
        else:
            for seq, logits in enumerate(cache.extend(list(enumerate(fed)))):
                rows[seq].extend(logits)
        return [torch.log_softmax(torch.stack(r[:FED + 1]), dim=-1) for r in rows], fed
    finally:
        for part in (cache.batch, cache.context, cache.model):
            part.close()


@pytest.fixture(scope="module")
def reference(folders):
    return log_probs(folders["F32"])


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_quantized_log_probabilities_and_greedy_tokens_follow_float32(folders, reference, quant):
    f32, fed = reference
    mine, _ = log_probs(folders[quant], fed)
    tolerance = TOLERANCE[quant]
    same = positions = 0
    for theirs, ours in zip(f32, mine):
        assert (ours - theirs).abs().max().item() < tolerance, quant
        top2 = theirs.topk(2, dim=-1)
        for position in range(theirs.shape[0]):
            if top2.values[position, 0] - top2.values[position, 1] > 2 * tolerance:
                assert int(ours[position].argmax()) == int(top2.indices[position, 0]), (quant, position)
        same += int((ours.argmax(dim=-1) == theirs.argmax(dim=-1)).sum())
        positions += theirs.shape[0]
    assert positions == SEQUENCES * (FED + 1) and same >= AGREE[quant] * positions, (quant, same, positions)
    assert (mine[0] - f32[0]).abs().max().item() > 0, "the quantized file computed float32's numbers"


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_the_plain_kernels_give_the_extra_buffer_types_answers(folders, reference, quant):
    _, fed = reference
    extra, _ = log_probs(folders[quant], fed, extra_bufts=True)
    plain, _ = log_probs(folders[quant], fed, extra_bufts=False)
    for a, b in zip(extra, plain):
        assert (a - b).abs().max().item() < 0.01


def test_the_backend_decodes_a_quantized_model_in_batches_as_one_at_a_time(folders):
    from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend

    words = "Rewrite this prompt so that it asks for more steps, more care and a worked example: "
    requests = [ChatRequest.chat([{"role": "user", "content": words * 3 + topic}], max_tokens=12)
                for topic in ("Name a color.", "Write a haiku.", "Explain leap years.", "Give three tips.")]
    batched = LlamaCppBackend(str(folders["Q4_0"]), threads=1, batch_size=SEQUENCES, extra_bufts=True)
    assert min(len(batched.render(r)) for r in requests) >= 64
    alone = LlamaCppBackend(str(folders["Q4_0"]), threads=1, batch_size=1, reuse_prefix=False, speculative=False,
                            extra_bufts=True)
    together, apart = batched.generate(requests), alone.generate(requests)
    assert all(c.completion_tokens > 0 for c in together)
    # the same tokens up to rounding between batch shapes: most answers identical, every one starting alike
    assert sum(a.text == b.text for a, b in zip(together, apart)) >= SEQUENCES - 1
    assert all(a.text[:8] == b.text[:8] for a, b in zip(together, apart))
