"""The scorer's packed path (sequences end to end in one row, attention inside each sequence: no padding)
against its padded path and the one-item reference, on the suite's tiny model with items of very different
lengths. On the CPU the packed path runs its exact per-sequence attention (the GPU runs a variable-length
flash kernel over the same rows); the floats must agree within 1e-4."""

from __future__ import annotations

import random

import pytest
import torch

from evolforge.core.models import load_scorer
from evolforge.score import device, losses, varlen
from evolforge.score.device import device_token_budget, use_packing
from evolforge.score.ifd import ifd_scores, reference_ifd_scores
from evolforge.score.layouts import packed_batches, token_budget_batches
from evolforge.score.losses import token_nlls

VALUES = ["loss_instruction", "loss_response", "loss_response_given_instruction", "ifd", "ic_ifd"]
COUNTS = ["n_tokens_instruction", "n_tokens_response", "n_tokens_response_given_instruction"]
WORDS = "the rain falls on a quiet town while seven children count prime numbers under blue light".split()


@pytest.fixture(scope="module")
def scorer(tiny_model):
    return load_scorer(str(tiny_model), device="cpu")


def whole_row(q, k, v, cu, longest, scale):
    """A wrong packed kernel: causal over the whole row, so a sequence attends to the ones before it."""
    part = [t.transpose(0, 1)[None] for t in (q, k, v)]
    return torch.nn.functional.scaled_dot_product_attention(*part, is_causal=True, scale=scale)[0].transpose(0, 1)


def _items(n: int = 14, seed: int = 0) -> dict[str, list[str]]:
    """Instructions of 1 to 60 words and responses of 1 to 300: sequences from a few tokens to several
    hundred, so packed rows hold many short sequences beside a long one."""
    rng = random.Random(seed)
    sizes = [(1, 1), (60, 300), (3, 2), (25, 120), (2, 250), (40, 5)] + [
        (rng.randint(1, 40), rng.randint(1, 200)) for _ in range(n - 6)]
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return {"instructions": [text(q) for q, _ in sizes], "inputs": ["" if i % 3 else text(4) for i in range(n)],
            "responses": [text(a) for _, a in sizes]}


def assert_close(actual, expected, rel: float = 1e-4) -> None:
    for column in COUNTS:
        assert actual[column].to_list() == expected[column].to_list(), column
    for column in VALUES:
        for got, want in zip(actual[column].to_list(), expected[column].to_list()):
            assert (got is None) == (want is None), column
            if want is not None:
                assert got == pytest.approx(want, rel=rel), column


@pytest.mark.parametrize("template", ["raw", "chat"])
def test_packed_scores_equal_padded_and_reference(scorer, template):
    model, tokenizer = scorer
    items = _items()
    reference = reference_ifd_scores(model, tokenizer, **items, template=template)
    padded = ifd_scores(model, tokenizer, **items, template=template, packing=False, max_batch_tokens=1024,
                        progress=False)
    for budget, rows in [(1024, None), (400, 3), (1 << 16, None)]:  # several rows; few sequences a row; one row
        packed = ifd_scores(model, tokenizer, **items, template=template, packing=True, max_batch_tokens=budget,
                            batch_size=rows, progress=False)
        assert_close(packed, padded)
        assert_close(packed, reference)
    assert model.config._attn_implementation != varlen.ATTENTION  # the model's own attention is back


def test_packed_rows_hold_many_sequences_and_no_padding(scorer, monkeypatch):
    """The packed path really packs: rows of several sequences, each row's tokens within the budget, and
    no pad token in any row."""
    model, tokenizer = scorer
    seen: list[tuple[int, int]] = []
    real = losses._scored_nll

    def spy(model, head, batch, out, logit_elements):
        seen.append((len(batch.members), batch.ids.shape[1]))
        assert batch.ids.shape[0] == 1 and batch.lengths and sum(batch.lengths) == batch.ids.shape[1]
        return real(model, head, batch, out, logit_elements)

    monkeypatch.setattr(losses, "_scored_nll", spy)
    ifd_scores(model, tokenizer, **_items(), packing=True, max_batch_tokens=700, progress=False)
    assert max(members for members, _ in seen) >= 4
    assert all(width <= 700 for members, width in seen if members > 1)


def test_token_nlls_packed_equal_padded_per_token(scorer):
    model, _ = scorer
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(3, 2000, (n,), generator=generator).tolist() for n in (1, 2, 300, 9, 140, 33, 2)]
    padded = token_nlls(model, sequences, max_batch_tokens=512)
    packed = token_nlls(model, sequences, max_batch_tokens=512, packed=True)
    assert [t.numel() for t in packed] == [max(len(s) - 1, 0) for s in sequences]
    for p, q in zip(packed, padded):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_packed_batches_fill_rows_first_fit():
    lengths = [5, 40, 12, 12, 3, 100, 7, 30]
    batches = packed_batches(lengths, max_batch_tokens=60, max_rows=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or sum(lengths[i] for i in batch) <= 60)
    # first fit, longest first: a 12 joins the 40, the other the 30; the 7 the 40's row, the 5 the 30's; the
    # 3 finds both rows at 3 sequences
    assert [sorted(lengths[i] for i in b) for b in batches] == [[100], [7, 12, 40], [5, 12, 30], [3]]
    # padded batches of the same lengths take more rows: padding counts against the budget
    assert len(token_budget_batches(lengths, 60, 3)) > len(batches)


def test_packed_attention_matches_each_sequence_alone(scorer):
    """The attention function on one packed row gives each sequence's logits as alone, whether the bounds
    come as cu_seq_lens (the scorer) or only as position ids (TRL's padding-free batches)."""
    model, _ = scorer
    lengths = [6, 17, 2]
    generator = torch.Generator().manual_seed(2)
    sequences = [torch.randint(3, 2000, (n,), generator=generator) for n in lengths]
    positions = varlen.packed_positions(lengths)[None]
    bounds = varlen.cumulative_lengths(lengths)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in sequences])
        with device.attending_packed(model):
            ids = torch.cat(sequences)[None]
            given = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                          max_length_q=17, max_length_k=17).logits[0]
            derived = model(input_ids=ids, position_ids=positions).logits[0]
    torch.testing.assert_close(given, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(derived, alone, rtol=1e-5, atol=1e-5)


def test_cpu_scores_padded_by_default_with_the_users_budget(scorer):
    model, _ = scorer
    assert use_packing(model) is False  # no variable-length kernel on the CPU: the exact padded path
    assert varlen.packed_kernel_works("cpu", torch.float32) is False
    assert device_token_budget(model, 3000) == 3000 and device_token_budget(model, None) == device.DEFAULT_BATCH_TOKENS
    assert use_packing(model, True) is True


def test_activation_estimate_bounds_the_measured_figure():
    """The per-token activation estimate of the Qwen2.5-1.5B shape in bf16 is above the ~62 KB measured on an
    H100 (docs/results/gpu.md) and within 2x of it, so the device budget neither overflows nor wastes half the GPU."""
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(hidden_size=1536, intermediate_size=8960), dtype=torch.bfloat16)
    estimate = device._activation_bytes_per_token(model)
    assert 62_000 < estimate < 124_000


def test_kernel_check_catches_attention_across_sequences():
    """The start-up check of a variable-length kernel (run inside the scorer's inference mode, backward
    included) passes the exact kernel and fails one that lets a sequence attend to the one before it."""
    with torch.inference_mode():
        assert varlen.kernel_agrees(varlen._sdpa_loop, "cpu", torch.float32, backward=True)
        assert not varlen.kernel_agrees(whole_row, "cpu", torch.float32)


def test_packed_batches_are_queued_without_reading_a_value_back(scorer, monkeypatch):
    """Queueing a pass's packed batches reads no tensor value back to the host (on a GPU each such read waits
    for the device): the losses come back in one copy, when collected. The CPU's per-sequence attention loop,
    which reads its bounds, is replaced by a stand-in, as the GPU's kernel would be. (Padded batches do not
    pass this: transformers' mask preparation checks the position ids it makes, once per forward pass.)"""
    model, _ = scorer
    generator = torch.Generator().manual_seed(3)
    sequences = [torch.randint(3, 2000, (n,), generator=generator).tolist() for n in (40, 7, 120, 3, 66, 90)]
    reads: list[str] = []
    monkeypatch.setattr(varlen, "_sdpa_loop", lambda q, k, v, cu, n, scale: torch.zeros_like(q))
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k:
                            (reads.append(_name), _real(self, *a, **k))[1])
    with device.attending_packed(model), torch.no_grad():
        pending = losses.queue_token_nlls(model, sequences, max_batch_tokens=160, packed=True)
        queued = list(reads)
        nlls = pending.collect()
    monkeypatch.undo()
    assert queued == [] and reads == ["cpu"]
    assert [t.numel() for t in nlls] == [n - 1 for n in (40, 7, 120, 3, 66, 90)]


def test_start_up_check_compares_packed_logits_with_unpacked(scorer, monkeypatch):
    """use_packing's model check on a GPU (here on the CPU's kernel): the tiny model gives the same logits packed
    as alone; with a kernel that lets sequences see each other it does not, and the scorer would pad."""
    model, _ = scorer

    assert device._packing_agrees(model)
    monkeypatch.setattr(varlen, "_sdpa_loop", whole_row)
    assert not device._packing_agrees(model)


@pytest.mark.slow  # compiling the tiny model's trunk and loss takes about a minute on two cores
@pytest.mark.parametrize("compile", [True, "loss"])
def test_compiled_scores_equal_eager_padded_and_packed(scorer, compile):
    """``compile=True`` (the trunk and the fused loss through torch.compile, dynamic shapes) and ``"loss"`` (the
    loss alone) give the eager path's floats, in padded and in packed rows of changing lengths (no recompilation
    per row length)."""
    model, tokenizer = scorer
    items = _items()
    torch._dynamo.reset()
    for packing in (False, True):
        eager = ifd_scores(model, tokenizer, **items, packing=packing, max_batch_tokens=400, progress=False)
        compiled = ifd_scores(model, tokenizer, **items, packing=packing, max_batch_tokens=400, progress=False,
                              compile=compile)
        assert_close(compiled, eager, rel=1e-5)
