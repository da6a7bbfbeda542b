"""Parallel inversion of each flow block: Jacobi and GS-Jacobi (Gauss-Seidel over modules, Jacobi inside).

A block's inverse is the fixed point of x_t = b_t(x_<t) + exp(a_t(x_<t)) z_t for all t at once. One
Jacobi iteration evaluates every token's (a, b) in one causal pass from the current iterate and
updates every token together. After k iterations the first k unknown tokens are exact, so a module
of L tokens is solved exactly after L iterations; in practice the iterate stops moving much sooner.

GS-Jacobi splits the T - 1 unknown tokens (token 0 is z_0) into G contiguous modules solved in
order; while module g iterates, the earlier modules' keys and values sit in the block's KV cache, so an
iteration costs one pass over the module's L tokens only. G = T - 1 with one iteration per module is
the sequential sampler; G = 1 is plain Jacobi. Each block gets its own strategy (`BlockStrategy`):
blocks differ in how hard they are to converge (in a trained TarFlow the last block, inverted first,
is the hard one).

Stopping rule, per module: the iteration stops when, for every sample, the relative change
||x^{k+1} - x^k|| / ||x^{k+1}|| (over the module's tokens) is below ``tol``, or after ``max_iters``
iterations (default: the module length, which makes the result exact whatever ``tol``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .sequential import SequentialSampler


@dataclass
class BlockStrategy:
    """How one block is inverted: ``modules`` contiguous modules (1 = Jacobi), at most ``max_iters``
    iterations per module (None: the module's length, so always exact)."""

    modules: int = 1
    max_iters: int | None = None

    def __post_init__(self):
        if self.modules < 1:
            raise ConfigError(f"a block strategy needs at least 1 module, got {self.modules}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"max_iters must be at least 1 (or None), got {self.max_iters}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BlockStrategy":
        return cls(int(d.get("modules", 1)), None if d.get("max_iters") is None else int(d["max_iters"]))


def module_bounds(num_tokens: int, modules: int) -> list[tuple[int, int]]:
    """Split the unknown tokens 1..T-1 into ``modules`` contiguous, near-equal [start, end) ranges."""
    n = num_tokens - 1
    g = max(1, min(modules, n))
    edges = [1 + round(i * n / g) for i in range(g + 1)]
    return [(s, e) for s, e in zip(edges[:-1], edges[1:]) if e > s]


class TooSlow(Exception):
    """A solve passed its deadline (used by calibration to drop candidates that cannot win)."""


@torch.no_grad()
def solve_block(block, z: Tensor, y: Tensor | None, attn_temp: Tensor | None, guide, strategy: BlockStrategy,
                tol: float, deadline: float | None = None) -> tuple[Tensor, list[int]]:
    """Invert one block by GS-Jacobi. z (B, T, D) in canonical order -> (x, iterations used per module)."""
    z = block.permute(z)
    B, T, D = z.shape
    st = block.inverse_state(B, y, attn_temp)
    x = z.clone()  # initial guess: the noise itself (token 0 is already exact)
    iterations = []
    for s, e in module_bounds(T, strategy.modules):
        L = e - s
        cap = L if strategy.max_iters is None else min(strategy.max_iters, L)
        zs = z[:, s:e]
        tokens = torch.arange(s, e, dtype=torch.float64).view(L, 1) if guide is not None else None
        k = 0
        while k < cap:
            k += 1
            a, b = block.split_params(block.chunk_params(x[:, s - 1:e - 1], st, s - 1))
            if guide is not None:
                a, b = guide(a, b, tokens.to(a.dtype))
            new = (zs * torch.exp(a) + b if block.affine else zs + b).to(x.dtype)
            done = k == cap
            if not done and tol > 0:
                change = (new - x[:, s:e]).flatten(1).norm(dim=1)
                done = bool((change <= tol * new.flatten(1).norm(dim=1)).all())
            x[:, s:e] = new
            if deadline is not None and time.perf_counter() > deadline:
                raise TooSlow
            if done:
                break
        iterations.append(k)
    return block.permute(x), iterations


class JacobiSampler(SequentialSampler):
    """Samples like `SequentialSampler` (same ``sample`` signature, guidance, denoising), but inverts
    each block by GS-Jacobi.

    ``strategy``: one `BlockStrategy` for every block, or a list with one per block in the model's
    block order (``model.blocks[i]``). ``tol``: the relative-change tolerance (see the module docstring).
    The default, one module per block, is plain Jacobi; `GSJacobiSampler` defaults to 7 modules.
    After a call, ``last_iterations[i]`` lists the iterations each module of block i used.
    """

    name = "jacobi"

    def __init__(self, model, strategy: BlockStrategy | list[BlockStrategy] | None = None, tol: float = 1e-5):
        super().__init__(model)
        n = len(model.blocks)
        strategy = BlockStrategy() if strategy is None else strategy
        self.strategies = list(strategy) if isinstance(strategy, (list, tuple)) else [strategy] * n
        if len(self.strategies) != n:
            raise ConfigError(f"got {len(self.strategies)} block strategies for a model with {n} blocks")
        if tol < 0:
            raise ConfigError(f"tol must be non-negative, got {tol}")
        self.tol = tol
        self.last_iterations: list[list[int]] = [[] for _ in range(n)]

    def invert(self, z: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None, guide=None) -> Tensor:
        m = self.model
        m.check_images(z, "z")
        tokens = m.patchify(z)
        T = m.config.num_tokens
        for i in reversed(range(len(m.blocks))):
            strat = self.strategies[i]
            if strat.modules >= T - 1 and strat.max_iters == 1:  # one token per module: the sequential inverse
                tokens, self.last_iterations[i] = m.blocks[i].inverse(tokens, y, attn_temp, guide), [1] * (T - 1)
                continue
            tokens, self.last_iterations[i] = solve_block(m.blocks[i], tokens, y, attn_temp, guide, strat, self.tol)
        return m.unpatchify(tokens)

    def describe(self) -> str:
        T = self.model.config.num_tokens
        parts = ["sequential" if s.modules >= T - 1 and s.max_iters == 1 else
                 f"{s.modules}x{'exact' if s.max_iters is None else s.max_iters}" for s in self.strategies]
        return f"{self.name} (tol {self.tol:g}; modules x iteration cap per block: {', '.join(parts)})"


class GSJacobiSampler(JacobiSampler):
    """`JacobiSampler` with ``modules`` contiguous modules per block by default (GS-Jacobi)."""

    name = "gs-jacobi"

    def __init__(self, model, strategy: BlockStrategy | list[BlockStrategy] | None = None, tol: float = 1e-5,
                 modules: int | None = None):
        if strategy is None:
            T = model.config.num_tokens
            strategy = BlockStrategy(modules or max(1, round(math.sqrt(T - 1))))
        super().__init__(model, strategy, tol)
