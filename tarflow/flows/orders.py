"""Token orders: the permutation a flow block applies to the canonical token sequence before its causal pass."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


class Order:
    """A permutation of the T tokens (dimension 1 of (B, T, D)): `apply` to enter a block, `undo` to leave it."""

    name = ""

    def apply(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def undo(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError


class Identity(Order):
    name = "identity"

    def apply(self, tokens: Tensor) -> Tensor:
        return tokens

    def undo(self, tokens: Tensor) -> Tensor:
        return tokens


class Flip(Order):
    """The reversed order: the block conditions each token on those after it in canonical order."""

    name = "flip"

    def apply(self, tokens: Tensor) -> Tensor:
        return tokens.flip(1)

    def undo(self, tokens: Tensor) -> Tensor:
        return tokens.flip(1)


class Permutation(Order):
    """Any fixed order: block position i holds canonical token ``index[i]`` (e.g. frame-causal video orders)."""

    name = "permutation"

    def __init__(self, index: Tensor):
        index = torch.as_tensor(index, dtype=torch.long)
        if not torch.equal(index.sort().values, torch.arange(len(index))):
            raise ConfigError(f"a token permutation must hold each of 0..{len(index) - 1} once")
        self.index = index
        self.inverse_index = index.argsort()

    def apply(self, tokens: Tensor) -> Tensor:
        return tokens[:, self.index.to(tokens.device)]

    def undo(self, tokens: Tensor) -> Tensor:
        return tokens[:, self.inverse_index.to(tokens.device)]


ORDERS = ("alternate", "same")


def block_orders(kind: str, num_blocks: int) -> list[Order]:
    """One order per block: ``alternate`` (identity, flip, identity, ...: TarFlow) or ``same`` (identity everywhere)."""
    if kind == "alternate":
        return [Flip() if i % 2 else Identity() for i in range(num_blocks)]
    if kind == "same":
        return [Identity() for _ in range(num_blocks)]
    raise ConfigError(f"order must be one of {ORDERS}, got {kind!r}")
