"""Likelihood metrics."""

from .likelihood import bits_per_dim, evaluate_bpd

__all__ = ["bits_per_dim", "evaluate_bpd"]
