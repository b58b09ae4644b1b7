"""Decoding on the CPU: a linear layer's product for a few rows, asked of the BLAS in the form it runs fastest.

A decoding step multiplies every weight matrix of the model by one row per sequence being decoded. torch's
``F.linear`` asks the BLAS for ``x @ weight.T``; for two to five rows, MKL's sgemm runs that form several times
slower on some CPUs (an AMD EPYC with AVX2: docs/explanation/cpu-kernels.md) than the same product asked the
other way round, ``(weight @ x.T).T``. One row takes MKL's matrix-vector path and six or more its blocked
kernel, both fast, so only :data:`ROWS` are routed.

Which form is faster depends on the CPU and the BLAS build, so :func:`weight_major_faster` times both once per
process and routes the rows only where the weight-major form wins by :data:`MIN_SPEEDUP`;
``EVOLFORGE_SMALL_BATCH_LINEAR`` = ``on`` | ``off`` decides instead. The two forms sum each output in another
order: a logit can differ in its last bits, as it does between batch sizes.

>>> import torch
>>> layer = torch.nn.Linear(8, 3, bias=True)
>>> x = torch.randn(4, 8)
>>> torch.allclose(small_batch_forward(layer, x), layer(x), atol=1e-6)
True
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENV = "EVOLFORGE_SMALL_BATCH_LINEAR"
ROWS = range(2, 6)  # the rows routed: 1 is a matrix-vector product, 6 and more take MKL's fast blocked kernel
PROBE_SHAPE = (16384, 1024)  # 64 MiB of float32: past a CPU's last-level cache, as a model's weights are per step
PROBE_ROWS = 4
MIN_SPEEDUP = 1.3  # the weight-major form must be this much faster in the probe to be used
PROBE_REPEATS = 5


def small_batch_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, with the product of :data:`ROWS` rows computed as ``(weight @ x.T).T``."""
    rows = x.numel() // layer.in_features if layer.in_features else 0
    if rows not in ROWS:
        return F.linear(x, layer.weight, layer.bias)
    y = torch.mm(layer.weight, x.reshape(rows, layer.in_features).T).T
    if layer.bias is not None:
        y = y + layer.bias
    return y.reshape(*x.shape[:-1], layer.out_features)


def best_seconds(fn, repeats: int = PROBE_REPEATS) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call."""
    fn()  # the first call pays for the BLAS's own setup
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def weight_major_faster() -> bool:
    """Whether this process routes :data:`ROWS` rows through the weight-major form: the setting when
    ``EVOLFORGE_SMALL_BATCH_LINEAR`` is ``on`` or ``off``, else (``auto``, the default) a probe that times both
    forms on a :data:`PROBE_SHAPE` weight and :data:`PROBE_ROWS` rows, best of :data:`PROBE_REPEATS`."""
    setting = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{ENV}={setting!r}: use auto, on or off")
    if setting != "auto":
        return setting == "on"
    with torch.inference_mode():
        weight = torch.full(PROBE_SHAPE, 0.5)
        x = torch.full((PROBE_ROWS, PROBE_SHAPE[1]), 0.25)
        linear_s = best_seconds(lambda: F.linear(x, weight))
        major_s = best_seconds(lambda: torch.mm(weight, x.T))
    faster = linear_s >= MIN_SPEEDUP * major_s
    log.info("CPU linear layers at %d rows: F.linear %.1f ms, weight @ x.T %.1f ms: %s", PROBE_ROWS,
             linear_s * 1e3, major_s * 1e3, f"{ROWS.start}-{ROWS.stop - 1} rows weight-major" if faster
             else "F.linear kept")
    return faster


def fit_small_batch_linears(model: torch.nn.Module) -> int:
    """Route ``model``'s linear layers through :func:`small_batch_forward` where this CPU runs it faster: the
    number of layers routed, 0 when the model is not on the CPU in float32 or the probe keeps ``F.linear``.
    For inference only (a decoding model); only plain ``nn.Linear`` layers whose forward nothing else replaced
    (an accelerate hook, a quantized or LoRA layer keep theirs; a LoRA layer's base layer is routed)."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32 or not weight_major_faster():
        return 0
    return route(model)


def route(model: torch.nn.Module, on: bool = True) -> int:
    """Route (``on``) the plain linear layers of ``model`` whose forward nothing else replaced through
    :func:`small_batch_forward`, whatever the probe found, or (``on=False``) take back the routing this module put
    there, and only it: the number of layers changed. A bench times both forms in one process with it.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> route(model), route(model), route(model, on=False), route(model, on=False)
    (2, 0, 2, 0)
    """
    changed = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        forward = vars(module).get("forward")
        if on and forward is None:
            module.forward = functools.partial(small_batch_forward, module)
            changed += 1
        elif not on and isinstance(forward, functools.partial) and forward.func is small_batch_forward:
            del module.forward
            changed += 1
    return changed
