"""Language models over token ids: TarFlowLM (a TarFlow on the text modality's vectors) and its discrete baseline.

Both give log-likelihoods of windows of ``context`` ids in nats per window (`log_likelihood`): the flow a
one-sample ELBO (`Text.elbo`, a bound), the autoregressive Transformer the exact sum_t log p(id_t | id_<t).
Bits/char = -log_likelihood / (context ln 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..modalities.text import BOUND_NAME
from ..nn import TransformerLayer
from .config import FlowConfig
from .saving import load_model, read_config, save_model
from .tarflow import TarFlow

EXACT_NAME = "exact log-likelihood (discrete autoregressive model)"


class DiscreteAR(nn.Module):
    """A causal Transformer over ids (nanoGPT-shaped) with the flow's width, head size and MLP ratio and
    num_blocks x layers_per_block layers (the flow's total depth): token + position embeddings (or RoPE), the
    library's `TransformerLayer`s, a final LayerNorm and a linear head to the vocabulary. A learned start
    embedding predicts the first id, so every id of a window is scored, as the flow's bound scores them."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        if config.modality != "text":
            raise ConfigError("the autoregressive architecture models text: set modality=text")
        self.config = config
        self.metadata: dict[str, Any] = {}
        width, context = config.width, config.context
        self.embed = nn.Embedding(config.vocab_size, width)
        self.start = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(context, width) * 0.02) if config.positions == "learned" else None
        self.layers = nn.ModuleList(TransformerLayer(width, config.head_dim, config.mlp_ratio, config.mixer, context,
                                                     config.aft_window, config.exclusive_attention,
                                                     config.sigma_reparam, config.positions == "rope",
                                                     dropout=config.dropout)
                                    for _ in range(sum(config.block_layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, config.vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def logits(self, ids: Tensor) -> Tensor:
        """log p(id_t = j | ids_<t) for t = 0 .. L (B, L + 1, V): row t reads ids[:, :t] (row 0 the start only)."""
        h = torch.cat([self.start.expand(ids.shape[0], 1, -1), self.embed(ids)], dim=1)
        if self.pos_embed is not None:
            h = h + self.pos_embed[:h.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return torch.log_softmax(self.head(self.norm(h)), dim=-1)

    def log_prob(self, ids: Tensor) -> Tensor:
        """sum_t log p(id_t | id_<t) per window (B,), nats."""
        logits = self.logits(ids[:, :-1])
        return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)

    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return save_model(self, path, metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "DiscreteAR":
        return load_model(cls, path, map_location)


def build_language_model(config: FlowConfig) -> TarFlow | DiscreteAR:
    """TarFlowLM or the discrete baseline, by ``config.architecture``."""
    if config.modality != "text":
        raise ConfigError(f"a language model needs modality=text, got {config.modality!r}")
    if not config.vocab_size:
        raise ConfigError("the character vocabulary is empty: it is set from the training text "
                          "(FlowConfig.vocabulary), or use tokenizer=byte")
    return DiscreteAR(config) if config.architecture == "autoregressive" else TarFlow(config)


def load_language_model(path: str | Path, map_location: str | torch.device = "cpu") -> TarFlow | DiscreteAR:
    """A saved text model (either architecture) from its directory."""
    config = read_config(Path(path))
    if config.modality != "text":
        raise ConfigError(f"{path} holds a {config.modality} model, not a text model")
    cls = DiscreteAR if config.architecture == "autoregressive" else TarFlow
    return cls.from_pretrained(path, map_location)


def bound_name(model: TarFlow | DiscreteAR) -> str:
    """What `log_likelihood` of this model is."""
    return EXACT_NAME if isinstance(model, DiscreteAR) else BOUND_NAME


def log_likelihood(model: TarFlow | DiscreteAR, ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """log p(ids) (baseline, exact) or its ELBO (flow, v ~ q with ``generator``), (B,) nats per window."""
    if isinstance(model, DiscreteAR):
        return model.log_prob(ids)
    return model.modality.elbo(lambda vectors: model.log_prob(vectors, validate=False), ids, generator)


def bits_per_char(log_likelihood_nats: Tensor, chars: int) -> Tensor:
    """-log p / (chars ln 2)."""
    return -log_likelihood_nats / (chars * math.log(2))
