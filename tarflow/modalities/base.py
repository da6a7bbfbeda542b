"""The modality interface: between a data batch and the flow's token sequence (B, T, D), and back.

A modality owns the data's shape checks and its bits-per-dimension convention; the flow core only
ever sees tokens.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


class Modality:
    """Data <-> tokens. ``num_tokens`` T and ``token_dim`` D fix the flow's sequence; ``num_dims`` counts the
    data dimensions that bits/dim divide by."""

    name = ""
    num_tokens: int
    token_dim: int
    num_dims: int

    def check(self, data: Tensor, name: str = "x") -> None:
        """Raise `InputError` naming what is wrong with ``data`` and what was expected."""
        raise NotImplementedError

    def to_tokens(self, data: Tensor) -> Tensor:
        raise NotImplementedError

    def from_tokens(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def found_in(self, model_dir: Path) -> None:
        """Told by `TarFlow.from_pretrained` where the model was loaded from (to find files saved beside it)."""

    def bin_width(self, levels: int) -> float:
        """Width of one quantisation bin in model units, for bits/dim of discrete data."""
        raise NotImplementedError
