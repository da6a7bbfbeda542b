"""The condition rows of a training batch: class labels with label dropout, or, for a caption-conditioned model,
captions drawn from the labels (a random train phrasing per image per step) with caption dropout."""

from __future__ import annotations

import torch
from torch import Tensor

from ..flows import ClassConditioning, FlowConfig
from ..flows.text_prefix import caption_conditioning


def training_condition(labels: Tensor, model_config: FlowConfig, dropout: float, generator: torch.Generator) -> Tensor:
    """Labels (B,) -> the batch's ``y``: labels, each the null class with probability ``dropout``; or caption ids
    (B, P), each row a train phrasing of its class drawn with ``generator``, the null caption with ``dropout``."""
    if not model_config.text_encoder:
        return ClassConditioning(model_config.num_classes).drop(labels.clone(), dropout, generator)
    captions = caption_conditioning(model_config)
    return captions.drop(captions.captions(labels, "train", generator), dropout, generator)
