"""The scorer against the official codes' paths, on byte-level BPE tokenizers like Llama-3's and Qwen's.

Each official path is reimplemented here straightforwardly, one item at a time, from a reading of
the official code (not from the scorer's helpers):

* ``ea_scores``: Evolution-Analysis ``Evol_Instruct/eval_loss.py`` @ 7595feb (paper B's IFD / IC-IFD);
* ``cherry_ifd``: Cherry_LLM ``cherry_seletion/data_analysis.py --mod cherry --prompt alpaca`` and
  ``data_by_IFD.py`` @ 01fac8d (the IFD paper).

The tokenizers are trained here on a little code and prose with the pre-tokenizer splits of Llama-3
(BOS added) and Qwen2 (no BOS), whose merges cross the instruction/response join ("\\n\\n   ",
".\\n", ":\\n"); the models are tiny random-weight Llamas.
"""

from __future__ import annotations

import pytest
import torch

from tiny import build_random_llama
from evolforge.core.models import load_scorer
from evolforge.score.ifd import ifd_scores
from evolforge.score.passes import encode_items

# Pre-tokenizer splits as in the Llama-3 and Qwen2 tokenizer.json files (Qwen: one digit at a time).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

CODE = [
    ('def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
     "    return a + b\n"),
    ('from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n    """Keep the even numbers.\n'
     '    >>> evens([1, 2, 4])\n    [2, 4]\n    """\n',
     "    result = []\n    for x in xs:\n        if x % 2 == 0:\n            result.append(x)\n    return result\n"),
    ('def is_palindrome(text: str) -> bool:\n    """True when text reads the same backwards."""\n',
     "    return text == text[::-1]\n"),
    ("Write a Python function that counts the vowels in a string.",
     "def count_vowels(s):\n    return sum(1 for c in s if c in 'aeiou')\n"),
]
PROSE = [
    ("Explain why the sky is blue.", "Sunlight scatters off the molecules of the air, and blue light scatters most."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("List three primary colours:", "Red, yellow and blue."),
    ("Summarise the text in one sentence.", "Two engineers met in Paris and talked about engines."),
]
# (instruction, input, output); two with an input (Alpaca's "### Input:" block; Q = instruction + "\n" + input).
ITEMS = [(q, "", a) for q, a in CODE + PROSE] + [
    ("Translate the sentence into French.", "The cat sleeps on the mat.", "Le chat dort sur le tapis."),
    ("Fix the bug in this function:", "def inc(x):\n    return x - 1\n", "    return x + 1\n"),
]


def corpus() -> list[str]:
    texts = [q + "\n" + a for q, a in CODE + PROSE] + [q + "\n\n### Response:" + a for q, a in CODE + PROSE]
    return texts * 20


def train_tokenizer(split: str, bos: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    if bos:  # Llama-3: BOS in front of every text tokenized with special tokens
        tok.post_processor = processors.TemplateProcessing(single="<|begin|> $A", special_tokens=[("<|begin|>", 0)])
    else:  # Qwen: nothing added
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>" if bos else None,
                                   eos_token="<|end|>", pad_token="<|end|>")


@pytest.fixture(scope="module", params=["llama3-like", "qwen-like"])
def scorer(request, tmp_path_factory):
    split, bos = {"llama3-like": (LLAMA3_SPLIT, True), "qwen-like": (QWEN_SPLIT, False)}[request.param]
    path = tmp_path_factory.mktemp(request.param)
    build_random_llama(path, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                       tokenizer=train_tokenizer(split, bos))
    return load_scorer(str(path), device="cpu")


# ---- the official paths, one item at a time ----------------------------------------------------


@torch.inference_mode()
def ea_scores(model, tokenizer, instruction: str, input_text: str, output: str) -> tuple[float, float]:
    """(IFD, IC-IFD) as eval_loss.py computes them with batch_size = 1."""
    model_inst = instruction + "\n" + input_text if input_text else instruction
    input_ids = tokenizer([model_inst + "\n" + output], return_tensors="pt", padding=True).input_ids
    output_ids = tokenizer([output], return_tensors="pt", padding=True).input_ids
    boundary = len(tokenizer(model_inst, return_tensors="pt").input_ids[0])
    response_labels, instruction_labels = input_ids.clone(), input_ids.clone()
    response_labels[0, :boundary] = -100
    instruction_labels[0, boundary:] = -100
    inst_loss = model(input_ids=input_ids, labels=instruction_labels).loss.item()
    output_only_loss = model(input_ids=output_ids, labels=output_ids).loss.item()
    output_loss = model(input_ids=input_ids, labels=response_labels).loss.item()
    return output_loss / output_only_loss, output_loss / (inst_loss * output_only_loss)


ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")


@torch.inference_mode()
def cherry_ifd(model, tokenizer, instruction: str, input_text: str, output: str, max_length: int,
               token_losses=None) -> float | None:
    """IFD as data_analysis.py (--mod cherry --prompt alpaca) + data_by_IFD.py compute it; None where
    data_by_IFD.py skips the item (IFD > 1 is returned, not dropped: selection drops it).
    ``token_losses(model, tokenizer, text, target, limit)`` replaces the per-token losses of
    data_analysis.py (bench/score_reference.py passes the official function)."""
    prompt = alpaca_prompt(instruction, input_text)
    whole_text, direct_text = prompt + output, "### Response:" + output
    prompt_len = tokenizer.encode(prompt, return_tensors="pt", truncation=True, max_length=max_length).shape[1]

    def all_token_losses(text: str, limit: int) -> list[float]:  # data_analysis.py: loss of every token 1..
        if token_losses is not None:
            return token_losses(model, tokenizer, text, output, limit)
        ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=limit)
        logits = model(ids).logits
        log_probs = torch.log_softmax(logits[0].float(), dim=-1)
        return [-log_probs[i - 1, ids[0, i]].item() for i in range(1, ids.shape[1])]

    def response_part(text: str, limit: int, losses: list[float]) -> tuple[int, list[float]]:  # data_by_IFD.py
        ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=limit)
        start_token = len(tokenizer.encode(text[: text.rfind(output)]))
        return ids.shape[1] - start_token, losses[start_token - 1 : ids.shape[1] - 1]

    if max_length - prompt_len <= 0:
        return None
    direct_limit = max_length - prompt_len + 4
    len_direct, direct = response_part(direct_text, direct_limit, all_token_losses(direct_text, direct_limit))
    len_whole, conditioned = response_part(whole_text, max_length, all_token_losses(whole_text, max_length))
    if len_direct <= 0 or len_whole <= 0 or prompt_len + len_direct > max_length:
        return None
    return (sum(conditioned) / len(conditioned)) / (sum(direct) / len(direct))


# ---- tests ---------------------------------------------------------------------------------------


def test_the_joins_merge_in_these_tokenizers(scorer):
    """The cases the tests are about occur: tokenizing Q alone does not give the joint text's first
    tokens for some items (so a boundary rule matters), code and prose alike."""
    _, tokenizer = scorer
    crossing = []
    for instruction, input_text, output in ITEMS:
        question = instruction + "\n" + input_text if input_text else instruction
        alone = tokenizer(question)["input_ids"]
        if tokenizer(question + "\n" + output)["input_ids"][: len(alone)] != alone:
            crossing.append(instruction)
    assert any(q in crossing for q, _ in CODE) and any(q in crossing for q, _ in PROSE)


def test_raw_template_equals_ea_eval_loss(scorer):
    model, tokenizer = scorer
    instructions, inputs, outputs = map(list, zip(*ITEMS))
    ours = ifd_scores(model, tokenizer, instructions, inputs, outputs, template="raw", max_batch_tokens=256,
                      progress=False)
    for row, item in zip(ours.iter_rows(named=True), ITEMS):
        ifd, ic_ifd = ea_scores(model, tokenizer, *item)
        assert row["ifd"] == pytest.approx(ifd, rel=1e-4), item[0]
        assert row["ic_ifd"] == pytest.approx(ic_ifd, rel=1e-4), item[0]


def alpaca_prompt(instruction: str, input_text: str) -> str:
    if input_text == "":
        return ALPACA_NO_INPUT.format_map({"instruction": instruction})
    return ALPACA_INPUT.format_map({"instruction": instruction, "input": input_text})


@pytest.mark.parametrize("truncate", [False, True])
def test_cherry_template_equals_cherry_llm(scorer, truncate):
    """Cherry's max_length 512 keeps every item whole here; a max_length a few tokens past the median
    prompt truncates the responses of some items and makes Cherry skip others: the same ones are null."""
    model, tokenizer = scorer
    instructions, inputs, outputs = map(list, zip(*ITEMS))
    prompt_tokens = sorted(len(tokenizer.encode(alpaca_prompt(q, x))) for q, x, _ in ITEMS)
    max_length = prompt_tokens[len(ITEMS) // 2] + 6 if truncate else 512
    ours = ifd_scores(model, tokenizer, instructions, inputs, outputs, template="cherry", max_length=max_length,
                      max_batch_tokens=256, progress=False)
    expected = [cherry_ifd(model, tokenizer, *item, max_length) for item in ITEMS]
    for row, want, item in zip(ours.iter_rows(named=True), expected, ITEMS):
        if want is None:
            assert row["ifd"] is None and "Cherry skips" in row["null_reason"], item[0]
        else:
            assert row["ifd"] == pytest.approx(want, rel=1e-4), item[0]
    kept = sum(e is not None for e in expected)
    if truncate:
        cut = [len(tokenizer.encode(alpaca_prompt(q, x) + a)) > max_length for q, x, a in ITEMS]
        assert 0 < kept < len(ITEMS)
        # Cherry's direct pass keeps max_length - prompt + 4 tokens, 4 being BOS + "### Response:" in
        # Llama-2. With a shorter header (no BOS) it keeps a response token more than fits after the
        # prompt, and Cherry skips every truncated item.
        header_tokens = len(tokenizer.encode("### Response:"))
        assert any(c and e is not None for c, e in zip(cut, expected)) == (header_tokens >= 4)
    else:
        assert kept == len(ITEMS)


def test_offsets_boundary_gives_merged_join_tokens_to_the_response(scorer):
    """Under boundary="offsets" every token before the response lies inside Q, and the token holding
    the separator is the first response token; where the prefix rule counts a merged token into Q,
    the two rules differ."""
    _, tokenizer = scorer
    instructions, inputs, outputs = map(list, zip(*ITEMS))
    exact = encode_items(tokenizer, instructions, inputs, outputs, "raw", boundary="offsets")
    prefix = encode_items(tokenizer, instructions, inputs, outputs, "raw", boundary="prefix")
    differ = 0
    for e, p, (instruction, input_text, _) in zip(exact, prefix, ITEMS):
        question = instruction + "\n" + input_text if input_text else instruction
        assert e.conditioned_ids == p.conditioned_ids  # one tokenization, two boundary rules
        before = tokenizer.decode(e.conditioned_ids[: e.response_start], skip_special_tokens=True)
        assert question.startswith(before)
        assert not question.startswith(
            tokenizer.decode(e.conditioned_ids[: e.response_start + 1], skip_special_tokens=True))
        differ += e.response_start != p.response_start
    assert differ > 0
