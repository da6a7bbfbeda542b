"""TarFlow: data -> modality -> tokens -> N autoregressive flow blocks -> prior, and back."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..modalities import build_modality
from .block import ARFlowBlock
from .conditioning import ClassConditioning, Condition
from .config import FlowConfig
from .noise_level import NoiseLevelConditioning
from .orders import block_orders
from .priors import LearnedDiagonal, build_prior
from .saving import load_model, save_model
from .text_prefix import caption_conditioning
from .transforms import build_transform
from .transforms.mixture_d import CodebookMixture
from .video import video_blocks


class TarFlow(nn.Module):
    """Density p(x) by change of variables: log p(x) = log p_prior(z) + log|det dz/dx|.

    ``forward(x, y) -> (z, logdet)`` maps data (for pixels: (B, C, H, W) in [-1, 1]) to noise of the same
    shape; ``inverse(z, y)`` maps back. The parts, each an object chosen by the config: ``modality`` (data
    <-> tokens), ``conditioning`` (labels, null class), ``noise_levels`` (the trained range of a
    noise-conditioned model), ``blocks`` (each with its token order, layer count and per-token transform)
    and ``prior``.

    A noise-conditioned model (iTARFlow, ``config.noise_conditioning``) is the density p_t of x + t eps: its
    ``forward``, ``log_prob`` and ``inverse`` take ``noise_level`` t (one number or one per row) in the trained
    range [noise_level_min, noise_level_max]; ``extrapolate=True`` turns the error for a level outside it into
    a warning. Other models refuse a noise level.

    A caption-conditioned model (``config.text_encoder``) reads a caption as a causal prefix of its last block: its
    ``y`` is prompts (a list of strings), class labels (read as captions of the caption set) or caption ids
    (`tarflow.flows.captions`); ``conditioning`` is then a `CaptionConditioning`.
    """

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = {}  # what `save_pretrained` stored beside the architecture
        self.modality = build_modality(config)
        captioned = bool(config.text_encoder)
        self.conditioning = caption_conditioning(config) if captioned else ClassConditioning(config.num_classes)
        self.noise_levels = NoiseLevelConditioning(config.noise_conditioning, config.noise_level_min,
                                                   config.noise_level_max)
        transform = build_transform(config)
        orders = block_orders(config.order, config.num_blocks)
        last = config.num_blocks - 1
        if config.modality == "video":
            self.blocks = nn.ModuleList(video_blocks(config, transform, self.modality.tokens_per_frame, captioned))
        else:
            self.blocks = nn.ModuleList(
                ARFlowBlock(config, layers, orders[index], self.block_transform(index, transform),
                            conditioned=bool(config.num_classes) and not captioned
                            and (index == last or not config.condition_top_only),
                            captioned=captioned and index == last)
                for index, layers in enumerate(config.block_layers))
        self.prior = build_prior(config, self.modality.num_tokens, self.modality.token_dim)

    def block_transform(self, index: int, transform):
        """Block ``index``'s transform: the config's, or for block 0 of a ``mixture_codebook`` text model Mix-d tied
        to the codebook (`CodebookMixture`)."""
        if index == 0 and self.config.mixture_codebook:
            return CodebookMixture(self.modality)
        return transform

    # ----- labels and inputs -------------------------------------------------------------------
    @property
    def null_class(self) -> int | None:
        """The label of the unconditional branch of a class-conditional model (None if unconditional)."""
        return self.conditioning.null_class

    def check_labels(self, y: Tensor | None, batch: int) -> Tensor | None:
        return self.conditioning.check(y, batch, self.device)

    def check_noise_level(self, noise_level, batch: int, extrapolate: bool = False) -> Tensor | None:
        return self.noise_levels.check(noise_level, batch, self.dtype, self.device, extrapolate)

    def check_images(self, x: Tensor, name: str = "x") -> None:
        self.modality.check(x, name)

    @property
    def device(self) -> torch.device:
        return next(self.blocks.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the noise samplers draw)."""
        return next(self.blocks.parameters()).dtype

    # ----- tokens ------------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        """Data -> tokens (B, T, D) (for pixels: p x p x C patches in raster order)."""
        return self.modality.to_tokens(x)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        return self.modality.from_tokens(tokens)

    # ----- density -----------------------------------------------------------------------------
    def flow(self, tokens: Tensor, y: Tensor | None = None, noise_level: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
        """Tokens (B, T, D) through every block: (z tokens, logdet (B,) in nats). No input checks."""
        condition = Condition(y, noise_level=noise_level)
        logdet = tokens.new_zeros(tokens.shape[0], dtype=torch.promote_types(tokens.dtype, torch.float32))
        for block in self.blocks:
            tokens, block_logdet = block(tokens, condition)
            logdet = logdet + block_logdet
        return tokens, logdet

    def set_likelihood_prior(self, kind: str) -> None:
        """Which density log p(x) uses with a learned prior: "learned" (N(0, s^2)) or "standard" (N(0, I), the
        definition of apple/ml-tarflow's additive bits/dim); see `FlowConfig.likelihood_prior`. Saved with the model."""
        self.config = dataclasses.replace(self.config, likelihood_prior=kind)
        if isinstance(self.prior, LearnedDiagonal):
            self.prior.likelihood = kind

    def prior_std(self) -> Tensor | None:
        """Per token-dimension std of the prior (T, D), or None for the standard normal."""
        return self.prior.std()

    def forward(self, x: Tensor, y: Tensor | None = None, noise_level=None, extrapolate: bool = False
                ) -> tuple[Tensor, Tensor]:
        """x (data) -> (z of the same shape, log|det dz/dx| (B,) in nats)."""
        self.check_images(x)
        y = self.check_labels(y, x.shape[0])
        noise_level = self.check_noise_level(noise_level, x.shape[0], extrapolate)
        z, logdet = self.flow(self.patchify(x), y, noise_level)
        return self.unpatchify(z), logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None, validate: bool = True, noise_level=None,
                 extrapolate: bool = False) -> Tensor:
        """log p(x | y) per sample, in nats (a density: it can be positive); log p_t(x | y) at noise level t for a
        noise-conditioned model.

        ``validate=False`` skips the input checks (shape, labels, NaN, noise level), whose data-dependent branches
        would break a `torch.compile` graph: for callers that check their batches themselves, like the trainer.
        """
        if validate:
            self.check_images(x)
            y = self.check_labels(y, x.shape[0])
            noise_level = self.check_noise_level(noise_level, x.shape[0], extrapolate)
        condition = Condition(y, noise_level=noise_level)
        z, logdet = self.flow(self.patchify(x), y, noise_level)
        return self.prior.log_prob(z, condition) + logdet

    @torch.no_grad()
    def inverse(self, z: Tensor, y: Tensor | None = None, noise_level=None, extrapolate: bool = False) -> Tensor:
        """z -> x, exactly, block by block in reverse, each token by token (KV cache). Samplers add guidance."""
        self.check_images(z, "z")
        noise_level = self.check_noise_level(noise_level, z.shape[0], extrapolate)
        condition = Condition(self.check_labels(y, z.shape[0]), noise_level=noise_level)
        tokens = self.patchify(z)
        for block in reversed(self.blocks):
            tokens = block.inverse(tokens, condition)
        return self.unpatchify(tokens)

    # ----- save / load -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (architecture, library version, metadata) and ``model.safetensors``, atomically."""
        return save_model(self, path, metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "TarFlow":
        """Rebuild a model from a `save_pretrained` directory, in eval mode; no architecture arguments needed."""
        return load_model(cls, path, map_location)
