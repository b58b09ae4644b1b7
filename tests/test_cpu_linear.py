"""core/cpu_linear.py: a decoding step's few-row products in the weight-major form, where the probe finds it faster.

- the routed forward equals ``F.linear`` (to float32 rounding) at every row count, with and without a bias, on
  2-D and 3-D inputs, and is ``F.linear`` itself outside ``ROWS``;
- ``EVOLFORGE_SMALL_BATCH_LINEAR`` decides (on / off) or the probe does (auto); another value is refused by name;
- a model is routed only on the CPU in float32, every plain ``nn.Linear`` of it, never a layer whose forward was
  already replaced; the hf backend's greedy answers are the same routed or not on the tiny model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from evolforge.core import cpu_linear
from evolforge.core.cpu_linear import (ENV, ROWS, fit_small_batch_linears, route, small_batch_forward,
                                       weight_major_faster)


@pytest.fixture
def decided(monkeypatch):
    """Set the env switch and forget the process's cached verdict (and again after the test)."""
    def decide(value: str) -> None:
        monkeypatch.setenv(ENV, value)
        weight_major_faster.cache_clear()

    yield decide
    weight_major_faster.cache_clear()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 9])
def test_the_routed_product_equals_linear(rows, bias):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(64, 96, bias=bias)
    x = torch.randn(rows, 64)
    assert torch.allclose(small_batch_forward(layer, x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
    batched = x.reshape(rows, 1, 64)  # a decoding step: (sequences, 1 position, features)
    out = small_batch_forward(layer, batched)
    assert out.shape == (rows, 1, 96)
    assert torch.allclose(out.reshape(rows, 96), F.linear(x, layer.weight, layer.bias), atol=1e-5)
    if rows not in ROWS:  # F.linear itself, bit for bit
        assert torch.equal(small_batch_forward(layer, x), F.linear(x, layer.weight, layer.bias))


def test_the_switch_decides_and_a_wrong_value_is_refused(decided):
    decided("on")
    assert weight_major_faster() is True
    decided("off")
    assert weight_major_faster() is False
    decided("sometimes")
    with pytest.raises(ValueError, match=f"{ENV}='sometimes': use auto, on or off"):
        weight_major_faster()


def test_auto_times_both_forms_and_keeps_linear_unless_clearly_faster(decided, monkeypatch):
    decided("auto")
    timings = iter([0.010, 0.009])  # F.linear, then weight-major: not MIN_SPEEDUP apart
    monkeypatch.setattr(cpu_linear, "best_seconds", lambda fn: (fn(), next(timings))[1])
    assert weight_major_faster() is False
    weight_major_faster.cache_clear()
    timings = iter([0.030, 0.010])
    assert weight_major_faster() is True
    assert weight_major_faster() is True  # once per process: no third timing asked for


def test_a_model_is_routed_only_on_the_cpu_in_float32(decided):
    decided("on")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    hooked = model[2]
    hooked.forward = lambda x: x  # another library's hook: left alone
    assert fit_small_batch_linears(model) == 1
    assert "forward" in vars(model[0]) and hooked.forward(torch.ones(2, 8)).shape == (2, 8)
    x = torch.randn(3, 8)
    assert torch.allclose(model[0](x), F.linear(x, model[0].weight, model[0].bias), atol=1e-6)
    assert fit_small_batch_linears(torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)) == 0
    decided("off")
    assert fit_small_batch_linears(torch.nn.Sequential(torch.nn.Linear(8, 8))) == 0


def test_route_takes_back_only_its_own_routing():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    hook = model[2].forward = lambda x: x  # another library's hook: neither routed nor taken back
    assert route(model) == 1 and route(model, on=False) == 1
    assert "forward" not in vars(model[0]) and vars(model[2])["forward"] is hook
    x = torch.randn(3, 8)
    assert torch.equal(model[0](x), F.linear(x, model[0].weight, model[0].bias))


def test_the_hf_backend_answers_the_same_routed_or_not(tiny_model, decided):
    from evolforge.llm.backends.hf.backend import HFBackend
    from evolforge.llm.requests import ChatRequest

    requests = [ChatRequest.chat([{"role": "user", "content": q}], temperature=0.0, max_tokens=24)
                for q in ("Name a colour.", "Add 2 and 3.", "Reverse the words of a sentence.")]
    answers = {}
    for setting in ("off", "on"):
        decided(setting)
        backend = HFBackend(str(tiny_model))
        routed = sum("forward" in vars(m) for m in backend.model.modules())
        assert (routed > 0) == (setting == "on")
        answers[setting] = [c.text for c in backend.generate(requests)]
    assert answers["on"] == answers["off"]
