"""Parallel inversion of each flow block: Jacobi and GS-Jacobi (Gauss-Seidel over modules, Jacobi inside).

A block's inverse is the fixed point of x_t = f^{-1}(z_t; theta_t(x_<t)) for all t at once (affine:
x_t = b_t + exp(a_t) z_t). One
Jacobi iteration evaluates every token's (a, b) in one causal pass from the current iterate and
updates every token together. After k iterations the first k unknown tokens are exact, so a module
of L tokens is solved exactly after L iterations; in practice the iterate stops moving much sooner.

GS-Jacobi splits the T - 1 unknown tokens (token 0 is z_0; all T with a learned start) into G contiguous
modules solved in
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
from ..flows.conditioning import Condition
from ..flows.video import FrameLocalBlock
from .guidance import Guidance
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


def module_bounds(num_tokens: int, modules: int, first: int = 1) -> list[tuple[int, int]]:
    """Split the unknown tokens first..T-1 (first = 0 for a block with a learned start) into ``modules``
    contiguous, near-equal [start, end) ranges."""
    n = num_tokens - first
    g = max(1, min(modules, n))
    edges = [first + round(i * n / g) for i in range(g + 1)]
    return [(s, e) for s, e in zip(edges[:-1], edges[1:]) if e > s]


class TooSlow(Exception):
    """A solve passed its deadline (used by calibration to drop candidates that cannot win)."""


@torch.no_grad()
def solve_block(block, z: Tensor, condition: Condition, guidance: Guidance | None, strategy: BlockStrategy,
                tol: float, deadline: float | None = None, bounds: list[tuple[int, int]] | None = None
                ) -> tuple[Tensor, list[int]]:
    """Invert one block by GS-Jacobi. z (B, T, D) in canonical order -> (x, iterations used per module).

    ``bounds``: the modules' [start, end) token ranges in block order, instead of ``strategy.modules`` near-equal
    ones. A video block within frames (`FrameLocalBlock`) solves every frame at once, each as its own sequence."""
    if isinstance(block, FrameLocalBlock):
        x, iterations = solve_block(block.block, block.fold(z), block.fold_condition(condition), guidance, strategy,
                                    tol, deadline, bounds)
        return block.unfold(x), iterations
    z = block.order.apply(z)
    batch, num_tokens, _ = z.shape
    cache = block.new_cache(condition, batch)
    x = z.clone()  # initial guess: the noise itself (tokens before block.first are already exact)
    iterations = []
    for start, end in bounds or module_bounds(num_tokens, strategy.modules, block.first):
        length = end - start
        cap = length if strategy.max_iters is None else min(strategy.max_iters, length)
        z_module = z[:, start:end]
        tokens = torch.arange(start, end, dtype=torch.float64).view(length, 1)
        count = 0
        while count < cap:
            count += 1
            params = block.params(block.inputs(x, start, end), condition, cache, start - block.first)
            if guidance is not None:
                params = block.transform.guide(params, guidance, tokens.to(params[0].dtype), num_tokens)
            new = block.transform.inverse(z_module, params)
            done = count == cap
            if not done and tol > 0:
                change = (new - x[:, start:end]).flatten(1).norm(dim=1)
                done = bool((change <= tol * new.flatten(1).norm(dim=1)).all())
            x[:, start:end] = new
            if deadline is not None and time.perf_counter() > deadline:
                raise TooSlow
            if done:
                break
        iterations.append(count)
    return block.order.undo(x), iterations


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

    def invert(self, tokens: Tensor, condition: Condition, guidance: Guidance | None = None) -> Tensor:
        blocks = self.model.blocks
        for index in reversed(range(len(blocks))):
            strategy = self.strategies[index]
            if self.is_sequential(strategy):  # one token per module: the sequential inverse
                tokens = blocks[index].inverse(tokens, condition, guidance)
                self.last_iterations[index] = [1] * (tokens.shape[1] - blocks[index].first)
                continue
            tokens, self.last_iterations[index] = solve_block(blocks[index], tokens, condition, guidance, strategy,
                                                              self.tol)
        return tokens

    def is_sequential(self, strategy: BlockStrategy) -> bool:
        return strategy.modules >= self.model.modality.num_tokens - 1 and strategy.max_iters == 1

    def describe(self) -> str:
        parts = ["sequential" if self.is_sequential(s) else
                 f"{s.modules}x{'exact' if s.max_iters is None else s.max_iters}" for s in self.strategies]
        return f"{self.name} (tol {self.tol:g}; modules x iteration cap per block: {', '.join(parts)})"


class GSJacobiSampler(JacobiSampler):
    """`JacobiSampler` with ``modules`` contiguous modules per block by default (GS-Jacobi)."""

    name = "gs-jacobi"

    def __init__(self, model, strategy: BlockStrategy | list[BlockStrategy] | None = None, tol: float = 1e-5,
                 modules: int | None = None):
        if strategy is None:
            T = model.modality.num_tokens
            strategy = BlockStrategy(modules or max(1, round(math.sqrt(T - 1))))
        super().__init__(model, strategy, tol)
