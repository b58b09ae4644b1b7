"""Counter-based noise for the hf backend's sampler (:mod:`evolforge.llm.sampling`): one uniform number in [0, 1)
with 53 random bits per draw, a function of the request's key, the position of the token drawn, the draw's number
and the repick's number alone, so no generator state has to follow a row from batch to batch. Each is computed
by 32-bit xor-shift-multiply rounds, each a bijection, keyed by the request's seed; the same integer arithmetic
runs in torch on the model's device and in numpy on a CPU, to the bit."""

from __future__ import annotations

import functools

import torch

_M32 = 0xFFFFFFFF


def _mix32(x):
    """A bijection of 32-bit words (two xor-shift-multiply rounds, multiplier 0x45D9F3B), on an int or an int64
    tensor: every product stays below 2**59, so int64 arithmetic never overflows."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def noise_key(seed: int) -> tuple[int, int]:
    """A request's seed (60 bits, :func:`evolforge.llm.keys.request_seed`) as the two 32-bit words of its key."""
    return seed >> 32 & _M32, seed & _M32


def uniforms(key: torch.Tensor, counter: torch.Tensor, draw: int, repick: int = 0) -> torch.Tensor:
    """One number in [0, 1) per row with 53 random bits, a function of the row's ``key`` (rows, 2), its
    ``counter`` (the position of the token drawn), ``draw`` and ``repick`` alone: for one key, each
    (counter, draw, repick, half) goes through a chain of bijections, so no two draws of a row share noise.

    >>> key = torch.tensor([[1, 2], [1, 2], [3, 4]])
    >>> u = uniforms(key, torch.tensor([7, 7, 7]), draw=0)
    >>> bool(u[0] == u[1]), bool(u[0] != u[2]), bool(((0 <= u) & (u < 1)).all())
    (True, True, True)
    """
    halves = [_mix32(_mix32(_mix32(half) ^ draw) ^ repick) for half in (0, 1)]  # python ints: no copy to the device
    base = _mix32(counter & _M32)
    x = torch.stack([base ^ halves[0], base ^ halves[1]], dim=-1)
    return _unit(_bits(_mix32(_mix32(x ^ key[:, 1:]) ^ key[:, :1])))


def uniforms_of_draws(key: torch.Tensor, counter: torch.Tensor, draws: int, repick: int = 0) -> torch.Tensor:
    """(rows, ``draws``): column d holds :func:`uniforms` of draw d, to the bit, in one pass of small operations
    instead of one per draw (their cost is their number, on a CPU as on a GPU). ``counter`` may also be (rows,
    positions): the noise is then (rows, positions, ``draws``), several steps' in one pass. On a CPU the same
    integer arithmetic runs in numpy, whose small operations cost less than torch's.

    >>> key, counter = torch.tensor([[1, 2], [3, 4]]), torch.tensor([5, 9])
    >>> all(torch.equal(uniforms_of_draws(key, counter, 3)[:, d], uniforms(key, counter, d)) for d in range(3))
    True
    """
    halves = _halves(key.device, draws, repick)
    if key.device.type == "cpu":
        return _unit(torch.from_numpy(_draw_bits(key.numpy(), counter.numpy(), halves.numpy())))
    return _unit(_draw_bits(key, counter, halves))


def _draw_bits(key, counter, halves):
    """The bits of :func:`uniforms_of_draws` as integers, from int64 tensors or numpy arrays alike; ``counter``
    (rows,) or (rows, positions), the bits (rows, [positions,] draws)."""
    x = _mix32(counter & _M32)[..., None, None] ^ halves
    words = (key.shape[0],) + (1,) * (x.ndim - 2)
    return _bits(_mix32(_mix32(x ^ key[:, 1].reshape(words + (1,))) ^ key[:, 0].reshape(words + (1,))))


@functools.lru_cache(maxsize=256)
def _halves(device: torch.device, draws: int, repick: int) -> torch.Tensor:
    """(draws, 2): the words :func:`uniforms` mixes into each half of a draw, on ``device`` once."""
    return torch.tensor([[_mix32(_mix32(_mix32(half) ^ draw) ^ repick) for half in (0, 1)] for draw in range(draws)],
                        device=device)


def _bits(x):
    """53 random bits, as an integer, from the two mixed 32-bit halves in the last dimension of ``x`` (27 + 26)."""
    return (x[..., 0] >> 5) * 2 ** 26 + (x[..., 1] >> 6)


def _unit(bits: torch.Tensor) -> torch.Tensor:
    """53-bit integers as numbers in [0, 1), exactly."""
    return bits.double() * 2.0 ** -53
