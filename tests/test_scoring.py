"""IFD / IC-IFD scoring: the batched scorer against the one-item-at-a-time reference, on a tiny
random-weight Llama built here (byte-level BPE tokenizer with BOS and a chat template)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import polars as pl
import pytest

from evolforge.config.loader import load_section
from evolforge.steps.score.settings import ScoreSettings
import torch

from tiny import build_random_llama
import evolforge.score.ifd as ifd
import evolforge.score.device as device
from evolforge.core.text import question_text
from evolforge.core.models import load_scorer
from evolforge.score.ifd import ifd_scores, reference_ifd_scores
from evolforge.score.layouts import token_budget_batches
from evolforge.score.losses import split_head
from evolforge.score.passes import chat_texts, encode_items

LOSS_COLUMNS = ["loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd"]
COUNT_COLUMNS = ["n_tokens_instruction", "n_tokens_response", "n_tokens_response_given_instruction"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    build_random_llama(
        path, vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
    )
    return load_scorer(str(path), device="cpu")


# Mixed lengths, with and without inputs (empty and None), one single-word response.
ITEMS = {
    "instructions": [
        "Write a short poem about the rain.",
        "Add two numbers.",
        "Explain why the sky is blue, in three sentences, for a child of seven who asks a lot of questions.",
        "List colours.",
        "Translate the sentence into French.",
        "Summarise the text below in one line, keeping the names of the people and the places it mentions.",
        "Hi",
    ],
    "inputs": [
        "", "2 and 3", "", None, "The cat sleeps on the mat.", "Ada met Alan in Paris; they spoke of engines.", ""
    ],
    "responses": [
        "Rain on the roof,\nsoft and slow;\nthe garden drinks.",
        "5",
        "Sunlight scatters off air molecules. Blue light scatters most. So we see blue everywhere we look.",
        "red, green, blue",
        "Le chat dort sur le tapis.",
        "Ada and Alan talked engines in Paris.",
        "Hello! How can I help you today? Ask me anything at all, about anything you like.",
    ],
}


def assert_same_scores(actual: pl.DataFrame, expected: pl.DataFrame, rtol: float = 1e-4) -> None:
    assert actual.columns == expected.columns
    for column in COUNT_COLUMNS:
        assert actual[column].to_list() == expected[column].to_list(), column
    for column in LOSS_COLUMNS:
        for got, want in zip(actual[column].to_list(), expected[column].to_list()):
            assert (got is None) == (want is None), column
            if want is not None:
                assert got == pytest.approx(want, rel=rtol), column


@pytest.mark.parametrize("template,boundary", [("raw", "prefix"), ("raw", "offsets"), ("chat", "prefix"),
                                               ("cherry", "offsets")])
def test_batched_scores_equal_reference_at_every_batch_size(scorer, template, boundary):
    model, tokenizer = scorer
    expected = reference_ifd_scores(model, tokenizer, **ITEMS, template=template, boundary=boundary, max_length=512)
    assert expected["ic_ifd"].null_count() == 0
    for batch_size, budget in [(1, 16384), (16, 64)]:  # one row a batch; several rows under a tight budget
        actual = ifd_scores(model, tokenizer, **ITEMS, template=template, boundary=boundary, max_length=512,
                            batch_size=batch_size, max_batch_tokens=budget, progress=False)
        assert_same_scores(actual, expected)


def test_sliced_projection_equals_full_logits(scorer, monkeypatch):
    """The vocabulary projection on a few positions at a time gives the full-logits losses (1e-5), and
    never sees more positions than the slice allows."""
    model, tokenizer = scorer
    head = split_head(model)
    assert head is not None and split_head(BigramModel(torch.zeros(4, 4))) is None
    full = ifd_scores(model, tokenizer, **ITEMS, progress=False, max_batch_tokens=1 << 20)
    monkeypatch.setattr(ifd, "split_head", lambda model: None)
    full_logits = ifd_scores(model, tokenizer, **ITEMS, progress=False, max_batch_tokens=1 << 20)
    monkeypatch.undo()
    vocab = head.projection.out_features
    monkeypatch.setattr(device, "_LOGIT_ELEMENTS", 3 * vocab)
    seen: list[int] = []
    hook = head.projection.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    try:
        sliced = ifd_scores(model, tokenizer, **ITEMS, progress=False, max_batch_tokens=1 << 20)
    finally:
        hook.remove()
    assert_same_scores(sliced, full_logits, rtol=1e-5)
    assert_same_scores(full, full_logits, rtol=1e-5)
    assert max(seen) == 3 and len(seen) > 20


def test_token_budget_batches():
    lengths = [5, 40, 12, 12, 3, 100, 7]
    batches = token_budget_batches(lengths, max_batch_tokens=40, max_rows=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 40
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_output_follows_input_order_across_chunks(scorer):
    model, tokenizer = scorer
    forward = ifd_scores(model, tokenizer, **ITEMS, batch_size=3, chunk_size=2, progress=False)
    backward = ifd_scores(model, tokenizer, **{k: v[::-1] for k, v in ITEMS.items()}, batch_size=3, progress=False)
    assert forward.height == len(ITEMS["instructions"])
    assert_same_scores(backward.reverse(), forward, rtol=1e-5)
    # Rows really differ, so a shuffled order would show.
    assert forward["n_tokens_response"].n_unique() > 3


def test_raw_template_token_layout(scorer):
    """EA's layout: Q + "\n" + A tokenized whole; the response starts at len(tokenize(Q))."""
    _, tokenizer = scorer
    [item] = encode_items(tokenizer, ["Add two numbers."], ["2 and 3"], ["5"], "raw")
    question = "Add two numbers.\n2 and 3"
    assert item.conditioned_ids == tokenizer(question + "\n5")["input_ids"]
    assert item.conditioned_ids[0] == tokenizer.bos_token_id
    assert item.response_start == len(tokenizer(question)["input_ids"])
    assert item.question_ranges == ((1, item.response_start),)  # BOS, then Q's tokens
    assert item.direct_ids == tokenizer("5")["input_ids"] and item.direct_start == 1


def test_chat_template_pieces_and_counts(scorer):
    model, tokenizer = scorer
    prompt, answer = chat_texts(tokenizer, "Add 2 and 3.", "5")
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert prompt == f"{bos}<|user|>\nAdd 2 and 3.{eos}\n<|assistant|>\n"
    assert answer == f"5{eos}\n"
    scores = ifd_scores(model, tokenizer, ["Add 2 and 3."], None, ["5"], template="chat", progress=False)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    instruction_tokens = len(tokenizer("Add 2 and 3.", add_special_tokens=False)["input_ids"])
    assert prompt_tokens > instruction_tokens + 3
    assert scores["n_tokens_instruction"][0] == instruction_tokens  # role markers are not the instruction
    assert scores["n_tokens_response_given_instruction"][0] == answer_tokens
    assert scores["n_tokens_response"][0] == answer_tokens  # the same tokens, after BOS + "<|assistant|>\n"


def test_chat_instruction_loss_leaves_out_an_injected_system_prompt(scorer):
    """A template that injects a default system prompt (as SmolLM2's does): L(Q) still averages the
    instruction's own tokens, the same count as without the system prompt."""
    model, tokenizer = scorer
    plain = tokenizer.chat_template
    tokenizer.chat_template = ("{{ bos_token }}<|system|>\nYou are a helpful assistant, kind and precise.<|end|>\n"
                               + plain.replace("{{ bos_token }}", ""))
    try:
        with_system = ifd_scores(model, tokenizer, ["Add 2 and 3."], None, ["5"], template="chat", progress=False)
        prompt, _ = chat_texts(tokenizer, "Add 2 and 3.", "5")
    finally:
        tokenizer.chat_template = plain
    without = ifd_scores(model, tokenizer, ["Add 2 and 3."], None, ["5"], template="chat", progress=False)
    assert "helpful assistant" in prompt
    assert with_system["n_tokens_instruction"][0] == without["n_tokens_instruction"][0]
    assert with_system["n_tokens_instruction"][0] == len(tokenizer("Add 2 and 3.", add_special_tokens=False)["input_ids"])
    assert with_system["loss_instruction"][0] != pytest.approx(without["loss_instruction"][0])  # context differs


def test_cherry_template_token_layout(scorer):
    _, tokenizer = scorer
    [plain, with_input] = encode_items(tokenizer, ["Add two numbers.", "Add."], ["", "2 and 3"], ["5", "5"], "cherry")
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
              "the request.\n\n### Instruction:\nAdd two numbers.\n\n### Response:")
    assert plain.conditioned_ids == tokenizer(prompt + "5")["input_ids"]
    assert plain.response_start == len(tokenizer(prompt)["input_ids"])
    assert plain.direct_ids == tokenizer("### Response:5")["input_ids"]
    assert plain.direct_start == len(tokenizer("### Response:")["input_ids"])
    # L(Q): the instruction's and the input's own tokens, not the template's
    [(start, end)] = plain.question_ranges
    assert tokenizer.decode(plain.conditioned_ids[start:end]) == "Add two numbers."
    assert [tokenizer.decode(with_input.conditioned_ids[a:b]) for a, b in with_input.question_ranges] == ["Add.", "2 and 3"]


def test_score_settings_from_params():
    assert load_section({}, "score", ScoreSettings) == ScoreSettings()
    config = load_section({"score": {"template": "cherry", "max_length": 512, "boundary": "offsets"}}, "score", ScoreSettings)
    assert (config.template, config.max_length, config.boundary) == ("cherry", 512, "offsets")
    with pytest.raises(ValueError, match=r"score.templat: unknown key; did you mean `template`"):
        load_section({"score": {"templat": "raw"}}, "score", ScoreSettings)
    with pytest.raises(ValueError, match=r"score.template: got \"alpaca\""):
        load_section({"score": {"template": "alpaca"}}, "score", ScoreSettings)
    with pytest.raises(ValueError, match=r"score.max_batch_tokens: got 0"):
        load_section({"score": {"max_batch_tokens": 0}}, "score", ScoreSettings)


class BigramModel(torch.nn.Module):
    """Logits depend only on the current token: row ``table[token]`` predicts the next one."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids])


def test_hand_computed_loss_on_three_tokens(scorer):
    _, tokenizer = scorer
    response = "ab"  # BOS + 2 tokens: L(A) averages -log P(a | BOS) and -log P(b | a)
    bos, first, second = tokenizer(response)["input_ids"]
    vocab = len(tokenizer)
    table = torch.zeros(vocab, vocab)
    table[bos, first] = math.log(vocab - 1)  # e^x / (e^x + vocab - 1) = 1/2
    table[first, second] = math.log(3 * (vocab - 1))  # = 3/4
    scores = ifd_scores(BigramModel(table), tokenizer, ["Say ab."], None, [response], progress=False)
    assert scores["n_tokens_response"][0] == 2
    assert scores["loss_response"][0] == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


def test_max_length_keeps_the_same_response_tokens_in_both_passes(scorer):
    model, tokenizer = scorer
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    instruction = "Count to twelve."
    # Byte-level BPE splits before each space, so a prefix of words is a prefix of tokens.
    pieces = [words[0]] + [" " + word for word in words[1:]]
    word_tokens = [len(tokenizer(piece, add_special_tokens=False)["input_ids"]) for piece in pieces]
    assert tokenizer("\n", add_special_tokens=False)["input_ids"].__len__() == 1
    prompt_tokens = len(tokenizer(instruction)["input_ids"])
    keep_words = 5
    max_length = prompt_tokens + 1 + sum(word_tokens[:keep_words])  # Q, "\n", then 5 words

    truncated = ifd_scores(
        model, tokenizer, [instruction], None, [" ".join(words)], max_length=max_length, progress=False
    )
    short = ifd_scores(model, tokenizer, [instruction], None, [" ".join(words[:keep_words])], progress=False)
    reference = reference_ifd_scores(model, tokenizer, [instruction], None, [" ".join(words)], max_length=max_length)
    assert truncated["n_tokens_response"][0] == sum(word_tokens[:keep_words])
    assert_same_scores(truncated, short, rtol=1e-5)
    assert_same_scores(truncated, reference)


def test_degenerate_items_give_null_with_a_reason(scorer):
    model, tokenizer = scorer
    scores = ifd_scores(
        model, tokenizer,
        ["A very long instruction that cannot fit in the budget", "", "Fine", None],
        ["", "", "", ""],
        ["ok", "empty instruction", "", "x"],
        max_length=6, progress=False,
    )
    too_long, empty_instruction, empty_response, missing = scores.to_dicts()
    assert too_long["ic_ifd"] is None and too_long["loss_response"] is None
    assert "longer than max_length=6" in too_long["null_reason"]
    # BOS alone: no instruction token to score, so no IC-IFD; IFD is still defined.
    assert empty_instruction["n_tokens_instruction"] == 0 and empty_instruction["loss_instruction"] is None
    assert empty_instruction["ic_ifd"] is None and empty_instruction["ifd"] is not None
    assert "instruction" in empty_instruction["null_reason"]
    # Empty response: "\n" is still scored after Q, but A alone is just BOS.
    assert empty_response["n_tokens_response"] == 0 and empty_response["ifd"] is None
    assert missing["null_reason"] == "missing instruction"
    assert scores.filter(pl.col("ic_ifd").is_not_null()).height == 0


def test_question_text_adds_input_only_when_non_empty():
    assert question_text("Add.", "2 and 3") == "Add.\n2 and 3"
    assert question_text("Add.", "") == "Add."
    assert question_text("Add.", None) == "Add."


def test_mismatched_lengths_are_an_error(scorer):
    model, tokenizer = scorer
    with pytest.raises(ValueError, match="one entry per item"):
        ifd_scores(model, tokenizer, ["a", "b"], None, ["x"], progress=False)
