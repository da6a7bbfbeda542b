"""The noise level t of iTARFlow: a flow trained on x + t eps for t in [t0, t1] reads t in every block.

`NoiseLevelEmbedding` turns t into a vector added to the Transformer input (beside the class embedding);
`NoiseLevelConditioning` checks the levels a caller passes against the trained range.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..errors import InputError


class NoiseLevelEmbedding(nn.Module):
    """e(t) = MLP([sin(w_k log t), cos(w_k log t)]_k), w_k = 10000^(-k / (W/2)), k = 0 .. W/2 - 1.

    Fourier features of log t (the levels span decades), then Linear(W, W), GELU, Linear(W, W).
    """

    def __init__(self, width: int, max_period: float = 10_000.0):
        super().__init__()
        half = width // 2
        self.register_buffer("frequencies", torch.exp(-math.log(max_period) * torch.arange(half) / max(half, 1)),
                             persistent=False)
        self.hidden = nn.Linear(2 * half, width)
        self.out = nn.Linear(width, width)

    def forward(self, levels: Tensor) -> Tensor:
        """levels (R,) > 0 -> embeddings (R, W)."""
        angles = torch.log(levels)[:, None] * self.frequencies.to(levels.dtype)
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(self.hidden.weight.dtype)
        return self.out(nn.functional.gelu(self.hidden(features)))


class NoiseLevelConditioning:
    """Which noise levels a model takes: none (``enabled`` False), or t in its trained range [t0, t1]."""

    def __init__(self, enabled: bool, minimum: float, maximum: float):
        self.enabled, self.minimum, self.maximum = enabled, minimum, maximum

    def check(self, levels, batch: int, dtype: torch.dtype, device: torch.device,
              extrapolate: bool = False) -> Tensor | None:
        """Levels as a (batch,) tensor, or a clear `InputError`.

        A level outside [t0, t1] is an error, or, with ``extrapolate``, a warning naming the range.
        """
        if not self.enabled:
            if levels is not None:
                raise InputError("this model is not noise-conditioned (noise_conditioning=false): pass "
                                 "noise_level=None")
            return None
        trained = f"[{self.minimum:g}, {self.maximum:g}]"
        if levels is None:
            raise InputError(f"this model is noise-conditioned: pass noise_level, one number or a ({batch},) tensor of "
                             f"noise stds t in its trained range {trained} (model units, data in [-1, 1])")
        levels = torch.as_tensor(levels, dtype=dtype).to(device)
        if levels.dim() == 0:
            levels = levels.expand(batch)
        if levels.shape != (batch,):
            raise InputError(f"noise_level must be one number or a tensor of shape ({batch},), got shape "
                             f"{tuple(levels.shape)}")
        if batch and not bool(torch.isfinite(levels).all() and (levels > 0).all()):
            raise InputError(f"noise_level must be finite and positive, got values "
                             f"{float(levels.min()):g}..{float(levels.max()):g}")
        if bool((levels < self.minimum).any() or (levels > self.maximum).any()):  # t0, t1 in the levels' dtype
            low, high = float(levels.min()), float(levels.max())
            given = f"{low:g}" if low == high else f"{low:g}..{high:g}"
            message = f"noise_level {given} lies outside the trained range {trained}"
            if not extrapolate:
                raise InputError(f"{message}: choose levels in the range, or pass extrapolate=True to use the model "
                                 f"outside it")
            warnings.warn(f"{message}: the model extrapolates", stacklevel=3)
        return levels
