"""What a flow block reads besides its tokens, and the component that owns class labels.

`Condition` carries one row per batch row (several guidance branches stacked: n B rows); models add fields
here (iTARFlow's noise level, NTM's per-token context) instead of new arguments on every block method. A
caption-conditioned model's labels are caption ids (`tarflow.flows.captions`), read by its last block's text prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError


@dataclass
class Condition:
    """labels (R,) with the null class for unconditional rows (caption-conditioned models: caption ids (R, P));
    attn_temp (R,) divides attention logits; noise_level (R,) the noise std t of each row's data (noise-conditioned
    models, iTARFlow); context (R, T, W) features per token, in canonical token order, that blocks built with a
    context width read (NTM: the trajectory predictor's features of the step's noisier image)."""

    labels: Tensor | None = None
    attn_temp: Tensor | None = None
    noise_level: Tensor | None = None
    context: Tensor | None = None

    def rows(self, default: int) -> int:
        """Rows the condition holds (``default`` when it holds none)."""
        for values in (self.labels, self.attn_temp, self.noise_level, self.context):
            if values is not None:
                return len(values)
        return default


class ClassConditioning:
    """Class labels 0..K-1 and the null class K: input checks, label dropout, guidance branches.

    K = 0 is an unconditional model (labels must be None).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    @property
    def null_class(self) -> int | None:
        """The label of the unconditional branch (None for an unconditional model)."""
        return self.num_classes or None

    def check(self, labels, batch: int, device: torch.device) -> Tensor | None:
        """Labels as a long tensor on ``device``, or a clear `InputError`."""
        n = self.num_classes
        if not n:
            if labels is not None:
                raise InputError("this model is unconditional (num_classes=0): pass y=None")
            return None
        if labels is None:
            raise InputError(f"this model is class-conditional with {n} classes: pass labels y of shape "
                             f"({batch},) with values 0..{n - 1}, or {n} (the null class) for unconditional")
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (batch,):
            raise InputError(f"labels y must be integers of shape ({batch},), got dtype {labels.dtype}, "
                             f"shape {tuple(labels.shape)}")
        if batch and (int(labels.min()) < 0 or int(labels.max()) > n):
            raise InputError(f"labels y must lie in 0..{n - 1} (or {n}, the null class), "
                             f"got values {int(labels.min())}..{int(labels.max())}")
        return labels.to(device=device, dtype=torch.long)

    def drop(self, labels: Tensor | None, probability: float, generator: torch.Generator) -> Tensor | None:
        """Label dropout for classifier-free guidance: each label becomes the null class with ``probability``."""
        if labels is None or not self.num_classes:
            return labels
        labels[torch.rand(len(labels), generator=generator) < probability] = self.num_classes
        return labels

    def branches(self, labels: Tensor | None, batch: int, attn_temp: float, dtype: torch.dtype,
                 device: torch.device) -> Condition:
        """The 2B rows of a guided pass: the conditional rows, then the unconditional ones (null class,
        attention temperature ``attn_temp``)."""
        both = None if labels is None else torch.cat([labels, torch.full_like(labels, self.num_classes)])
        # In the weights' dtype: a float32 tau would round e.g. 1.8 and move float64 samples by ~1e-6.
        temperature = torch.ones(2 * batch, device=device, dtype=dtype)
        temperature[batch:] = attn_temp
        return Condition(both, temperature)
