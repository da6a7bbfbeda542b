"""The bin map between integer levels k in {0..L-1} and model space [-1, 1] (bin width 2/L): uniform
dequantization lands in level k's bin with U[0, 1) noise inside it, and quantize undoes it.

Float32 rounding: dequantize forms k + u in float32, which keeps only 24 bits, so for k >= 1 a u within half an
ulp of 1 rounds k + u up to k + 1 and x lands exactly on the upper edge 2(k+1)/L - 1 (then quantize gives k + 1).
That happens for about 1 sample in 10^5 at L = 256 (probability <= 2^-16 per sample, about 2^-17 for k >= 128).
The tests pin the bin as closed on that side, allow only exact-edge values there, and bound their rate; changing
dequantize to avoid it would change every released figure's dequantization stream, so it is left as is."""

from __future__ import annotations

import pytest
import torch

from tarflow.data.quantize import bin_width, dequantize, quantize

LEVELS = [17, 256]
DRAWS = 4000  # per level: 68k (L = 17) and 1M (L = 256) samples
EDGE_RATE = 2.0 ** -16  # bound on the fraction of samples that float32 rounding puts on the upper edge


def levels_repeated(levels: int) -> torch.Tensor:
    return torch.arange(levels).repeat_interleave(DRAWS)


@pytest.mark.parametrize("levels", LEVELS)
def test_dequantized_values_lie_in_their_bin(levels):
    k = levels_repeated(levels)
    x = dequantize(k, levels, generator=torch.Generator().manual_seed(0)).double()
    lo, hi = 2 * k.double() / levels - 1, 2 * (k.double() + 1) / levels - 1
    hi32 = (2 * (k + 1).float() / levels - 1).double()  # the upper edge as float32 rounds it
    assert bool((x >= lo).all()) and bool((x <= hi32).all())
    on_edge = x >= hi
    assert bool((x[on_edge] == hi32[on_edge]).all())  # past the open edge only by rounding onto it
    assert on_edge.double().mean().item() <= EDGE_RATE
    assert bin_width(levels) == 2 / levels


@pytest.mark.parametrize("levels", LEVELS)
def test_dequantization_noise_is_uniform_over_one_bin(levels):
    """u = (x + 1) L / 2 - k has mean 1/2 and variance 1/12 in every bin. Fixed seed, so nothing flakes; the
    tolerances are > 10 standard errors (se of the mean over one bin: sqrt(1/12 / 4000) = 0.0046) and far below
    the shifts a wrong bin offset (k - 1/2, k + 1/2) or width (2/(L-1)) would give."""
    k = levels_repeated(levels)
    x = dequantize(k, levels, generator=torch.Generator().manual_seed(1)).double()
    u = ((x + 1) * levels / 2 - k).view(levels, DRAWS)
    assert bool((u >= 0).all()) and bool((u <= 1 + 1e-6).all())  # u = 1 only by float32 rounding (see top)
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 10 * (1 / 12 / n) ** 0.5
    assert abs(u.var().item() - 1 / 12) < 10 * (1 / 180 / n) ** 0.5  # var of (u - 1/2)^2 is 1/80 - 1/144 = 1/180
    per_bin = u.mean(1)  # every level, not just on average
    assert (per_bin - 0.5).abs().max().item() < 0.06
    # spread over the whole bin: the empirical CDF at 0.1 .. 0.9 matches the uniform's
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs((u < q).double().mean().item() - q) < 0.01


@pytest.mark.parametrize("levels", LEVELS)
def test_quantize_inverts_dequantize_for_every_level(levels):
    k = levels_repeated(levels)
    for seed in range(3):
        x = dequantize(k, levels, generator=torch.Generator().manual_seed(seed))
        q = quantize(x, levels).long()
        off = q != k
        # every miss is a sample float32 rounded onto the upper edge (see top), and those are rare
        assert torch.equal(q[off], k[off] + 1)
        assert bool((x[off] == 2 * (k[off] + 1).float() / levels - 1).all())
        assert off.double().mean().item() <= EDGE_RATE
    # the bin edges themselves (exact in binary for L = 256): 2k/L - 1 is level k, just below it level k - 1
    if levels == 256:
        edges = (2 * torch.arange(levels, dtype=torch.float64) / levels - 1)
        assert torch.equal(quantize(edges, levels).long(), torch.arange(levels))
        below = edges[1:] - 1e-12  # not nextafter: at 0 that is -5e-324, and x + 1 rounds it back to 1
        assert torch.equal(quantize(below, levels).long(), torch.arange(levels - 1))
    # just inside each bin's two ends (1e-4 of a bin: far above rounding) and its centre
    j = torch.arange(levels, dtype=torch.float64)
    for frac in (1e-4, 0.5, 1 - 1e-4):
        assert torch.equal(quantize(2 * (j + frac) / levels - 1, levels).long(), torch.arange(levels))
    # the bin centres (gaussian mode without noise) quantize to their level too
    centres = dequantize(torch.arange(levels), levels, noise="gaussian", noise_std=0.0)
    assert torch.equal(quantize(centres, levels).long(), torch.arange(levels))
    # out of range clamps to the end levels
    assert quantize(torch.tensor([-1.5, 1.0, 3.0]), levels).tolist() == [0, levels - 1, levels - 1]
