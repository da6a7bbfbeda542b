"""STARFlow2's Pretzel (issue 18): one causal model of interleaved words and images.

A sequence holds TEXT positions (one word id each) and IMAGE positions (one image token each); an image is the
T = (size / patch)^2 positions right after an ``<image>`` word, in raster order. Its density is

    log p(sequence) = sum_text log p(w_q | <q)                                        (language-model stream)
                    + sum_images [ sum_tokens (log N(z_q; 0, I) + log|det dz_q/du_q|)  (flow stream, deep)
                                   + log|det du/dx| ]                                   (shallow, per image)

- shallow flow (per image, `encode_images`): pixels x -> patches -> blocks 0 .. N-2 (`ARFlowBlock`s over the T
  tokens of one image, alternating orders) -> tokens u, log|det du/dx|;
- deep flow: z_q = (u_q - b_q) exp(-a_q), with (a_q, b_q) from the flow stream at position q - 1 (an image's first
  token is predicted at its ``<image>`` word), prior N(0, I);
- the joint stack, ``layers_per_block[-1]`` layers of two streams under one causal mask, both starting from the
  input embedding (word embedding, or projected u plus a within-image position embedding; plus the sequence
  position). Layer i: h_lm <- lm_layers[i](h_lm + lm_skip[i](h_flow)), then
  h_flow <- flow_layers[i](h_flow + flow_skip[i](h_lm)), the skips zero-initialised linear layers. This is our
  reading of the paper's "interleaved layer by layer with residual skip connections". The LM stream's layers are
  ours, or a Hugging Face causal LM's decoder layers with their weights (``config.language_model``,
  `tarflow.nn.llama`).

Position p's LM head predicts the word at p + 1; its flow head gives the affine params of the image token at
p + 1. `step` is the one Transformer pass: without a cache on a whole sequence (training), with one KV cache
(`JointCache`: the LM stream's layers and the flow stream's) on a chunk of positions (generation,
`sampling.interleaved`).
A batch is anything with the fields of `tarflow.data.interleaved.InterleavedBatch` (ids, is_image, images,
image_count, image_starts, lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..modalities import build_modality
from ..nn import KVCache, TransformerLayer, layer_norm, linear
from ..nn.llama import LlamaSpec, llama_layers, load_llama_weights, read_tensors, word_rows
from .block import ARFlowBlock
from .conditioning import Condition
from .config import FlowConfig
from .orders import block_orders
from .priors import StandardNormal
from .saving import load_model, save_model
from .transforms import Params, build_transform


@dataclass
class JointCache:
    """The KV caches of the two streams (their layers may differ in heads and head size)."""

    lm: KVCache
    flow: KVCache


def stream_cache(layers: nn.ModuleList, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> KVCache:
    """A KV cache for a stack of layers: keys and values of its attention's cached heads (GQA: the KV heads)."""
    attention = layers[0].attn
    heads = getattr(attention, "kv_heads", attention.heads)
    return KVCache(len(layers), batch, heads, length, attention.head_dim, dtype, device)


@dataclass
class JointLikelihood:
    """log p of each sequence's words (text) and of its images (image, the densities of the pixels as given), (B,)
    nats; the units they divide into: text targets (words after ``<bos>`` up to ``<eos>``) and image dimensions
    (C H W per image) per row."""

    text: Tensor
    image: Tensor
    text_targets: Tensor
    image_dims: Tensor

    def loss(self) -> Tensor:
        """-(text nats per target + image nats per dimension), each a mean over the batch's units."""
        text = self.text.sum() / self.text_targets.sum().clamp_min(1)
        image = self.image.sum() / self.image_dims.sum().clamp_min(1)
        return -(text + image)


class Pretzel(nn.Module):
    """The joint model (see the module docstring). ``words`` is the vocabulary (``config.words``); ``bos``, ``eos``
    and ``image_word`` the ids generation needs."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        if config.architecture != "pretzel":
            raise ConfigError(f"Pretzel needs architecture=pretzel, got {config.architecture!r}")
        if not config.words:
            raise ConfigError("the pretzel model's vocabulary is empty: set config.words to its words in id order "
                              "(training sets it from tarflow.data.interleaved.WORDS)")
        self.config = config
        self.metadata: dict[str, Any] = {}
        self.modality = build_modality(config)
        self.transform = build_transform(config)
        self.prior = StandardNormal()
        self.words = config.words.split()
        self.bos, self.eos, self.image_word = (self.words.index(word) for word in ("<bos>", "<eos>", "<image>"))
        *shallow_layers, joint_layers = config.block_layers
        orders = block_orders(config.order, config.num_blocks)
        self.shallow = nn.ModuleList(ARFlowBlock(config, layers, orders[index], self.transform, conditioned=False)
                                     for index, layers in enumerate(shallow_layers))
        width, token_dim, vocab = config.width, self.modality.token_dim, len(self.words)
        self.word_embed = nn.Embedding(vocab, width)
        nn.init.normal_(self.word_embed.weight, std=0.02)
        self.image_proj = nn.Linear(token_dim, width)
        self.image_pos = nn.Parameter(torch.randn(self.image_tokens, width) * 0.02)
        self.pos_embed = None
        if config.positions == "learned":
            self.pos_embed = nn.Parameter(torch.randn(config.context, width) * 0.02)
        self.lm_layers = self.language_model_layers(joint_layers)
        self.flow_layers = nn.ModuleList(self.joint_layer() for _ in range(joint_layers))
        self.lm_skip = nn.ModuleList(zero_linear(width, width) for _ in range(joint_layers))
        self.flow_skip = nn.ModuleList(zero_linear(width, width) for _ in range(joint_layers))
        self.lm_norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab)
        self.flow_norm = nn.LayerNorm(width)
        self.flow_head = zero_linear(width, self.transform.num_params(token_dim))
        self.language_model_words = 0  # words started from the language model's rows (a saved model's own weights
        if config.language_model and Path(config.language_model).expanduser().is_dir():  # replace all when it loads)
            self.language_model_words = self.load_language_model(config.language_model)

    def language_model_layers(self, count: int) -> nn.ModuleList:
        """The LM stream: ``count`` layers of our own, or the decoder layers ``config.language_model`` describes
        (`tarflow.nn.llama`; `load_language_model` fills them)."""
        config = self.config
        if not config.language_model:
            return nn.ModuleList(self.joint_layer() for _ in range(count))
        spec = LlamaSpec.from_json(config.language_model_config, config.context)
        return llama_layers(spec, config.context, config.dropout)

    def load_language_model(self, directory: str) -> int:
        """The LM stream's weights from the directory, and the word embedding and LM head started from its rows for
        our words (`word_rows`: the mean over each word's tokens, by its tokenizer); returns the number of words so
        started (0 without a tokenizer)."""
        tensors = read_tensors(Path(directory).expanduser())
        load_llama_weights(self.lm_layers, directory, tensors)
        rows = word_rows(directory, tensors, self.words)
        if rows is None:
            return 0
        inputs, outputs, known = rows
        with torch.no_grad():
            self.word_embed.weight[known] = inputs[known].to(self.dtype)
            self.lm_head.weight[known] = outputs[known].to(self.dtype)
            self.lm_head.bias.zero_()
        return int(known.sum())

    def joint_layer(self) -> TransformerLayer:
        config = self.config
        return TransformerLayer(config.width, config.head_dim, config.mlp_ratio, "attention", config.context,
                                exclusive=config.exclusive_attention, sigma_reparam=config.sigma_reparam,
                                rotary=config.positions == "rope", dropout=config.dropout)

    @property
    def image_tokens(self) -> int:
        """T, the positions of one image."""
        return self.modality.num_tokens

    @property
    def device(self) -> torch.device:
        return self.image_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_proj.weight.dtype

    # ----- the shallow flow: one image at a time --------------------------------------------------
    def encode_images(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels (n, C, H, W) in [-1, 1] -> tokens u (n, T, D), log|det du/dx| (n,) in nats: THE image encoder."""
        self.modality.check(images, "images")
        tokens = self.modality.to_tokens(images)
        logdet = tokens.new_zeros(len(images), dtype=torch.promote_types(tokens.dtype, torch.float32))
        for block in self.shallow if len(images) else ():  # blocks cannot shape an empty batch
            tokens, block_logdet = block(tokens, Condition())
            logdet = logdet + block_logdet
        return tokens, logdet

    @torch.no_grad()
    def decode_images(self, tokens: Tensor) -> Tensor:
        """Tokens u (n, T, D) -> pixels (n, C, H, W): the exact inverse of `encode_images`."""
        for block in reversed(self.shallow) if len(tokens) else ():
            tokens = block.inverse(tokens, Condition())
        return self.modality.from_tokens(tokens)

    # ----- the joint stack ------------------------------------------------------------------------
    def embed(self, ids: Tensor, tokens: Tensor, is_image: Tensor, image_index: Tensor, pos: int) -> Tensor:
        """Input embeddings (B, n, W) of positions pos .. pos+n-1: word_embed(id) at text positions,
        image_proj(u) + image_pos[index within the image] at image positions, plus the position embedding."""
        words = self.word_embed(ids.clamp_min(0))
        within = self.image_pos[image_index.clamp(0, self.image_tokens - 1)]
        images = linear(self.image_proj, tokens.to(self.dtype)) + within
        h = torch.where(is_image[..., None], images, words)
        if self.pos_embed is not None:
            h = h + self.pos_embed[pos:pos + ids.shape[1]]
        return h

    def streams(self, h: Tensor, cache: JointCache | None = None, pos: int = 0) -> tuple[Tensor, Tensor]:
        """Both streams' last rows (B n, W) from the input embeddings h (B, n, W) at positions pos .. pos+n-1; with
        ``cache``, earlier positions come from it."""
        batch, length, width = h.shape
        shape = (batch, length)
        lm = flow = h.reshape(batch * length, width)
        for index in range(len(self.lm_layers)):
            lm_cache = None if cache is None else cache.lm.layer(index)
            flow_cache = None if cache is None else cache.flow.layer(index)
            lm = self.lm_layers[index](lm + linear(self.lm_skip[index], flow), None, lm_cache, pos, shape)
            flow = self.flow_layers[index](flow + linear(self.flow_skip[index], lm), None, flow_cache, pos, shape)
        return lm, flow

    def step(self, ids: Tensor, image_tokens: Tensor, is_image: Tensor, cache: JointCache | None = None, pos: int = 0,
             image_index: Tensor | None = None) -> tuple[Tensor, Params]:
        """Predictions for positions pos+1 .. pos+n from positions pos .. pos+n-1: log p(word) (B, n, V) and the
        deep affine params (a, b) (B, n, D). ids, is_image, image_index (B, n) (or (B,) for one position, then the
        outputs lose that axis); image_tokens (B, n, D) (u at image positions, ignored elsewhere); image_index: each
        image position's index within its image (None: the chunk has no image positions). Without ``cache`` the
        chunk is the whole sequence from position 0."""
        single = ids.dim() == 1
        if single:
            ids, image_tokens, is_image = ids[:, None], image_tokens[:, None], is_image[:, None]
            image_index = None if image_index is None else image_index[:, None]
        if image_index is None:
            if bool(is_image.any()):
                raise InputError("step was given image positions without their image_index (each token's index "
                                 "within its image)")
            image_index = torch.zeros_like(ids)
        batch, length = ids.shape
        lm, flow = self.streams(self.embed(ids, image_tokens, is_image, image_index, pos), cache, pos)
        logits = linear(self.lm_head, layer_norm(self.lm_norm, lm)).view(batch, length, -1)
        raw = linear(self.flow_head, layer_norm(self.flow_norm, flow)).view(batch, length, -1)
        word_log_probs, params = torch.log_softmax(logits, dim=-1), self.transform.split(raw)
        if single:
            return word_log_probs[:, 0], tuple(param[:, 0] for param in params)
        return word_log_probs, params

    def new_cache(self, batch: int, length: int) -> JointCache:
        """One KV cache for ``batch`` rows of up to ``length`` positions: both streams' layers."""
        self.check_length(length)
        return JointCache(*(stream_cache(layers, batch, length, self.dtype, self.device)
                            for layers in (self.lm_layers, self.flow_layers)))

    def check_length(self, length: int) -> None:
        if length > self.config.context:
            raise InputError(f"a sequence of {length} positions is longer than the model's context "
                             f"({self.config.context} positions): shorten it, or train a model with a larger context")

    # ----- density --------------------------------------------------------------------------------
    def sequence_tokens(self, batch, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The batch's images through the shallow flow, placed at their positions: u (B, L, D) (zero at text
        positions), each position's index within its image (B, L), log|det du/dx| summed per row (B,).
        ``noise`` (B, K, C, H, W) is added to the images first."""
        images = batch.images.to(self.device, self.dtype)
        if noise is not None:
            images = images + noise.to(images)
        rows_count, length = batch.ids.shape
        count = batch.image_count.to(self.device)
        present = torch.arange(images.shape[1], device=self.device) < count[:, None]
        self.check_layout(batch, count)
        u, shallow_logdet = self.encode_images(images[present])
        image_rows = present.nonzero()[:, 0]
        within = torch.arange(self.image_tokens, device=self.device)
        rows = image_rows.repeat_interleave(self.image_tokens)
        columns = (batch.image_starts.to(self.device)[present][:, None] + within).reshape(-1)
        tokens = u.new_zeros(rows_count, length, u.shape[-1]).index_put((rows, columns), u.reshape(-1, u.shape[-1]))
        image_index = torch.zeros(rows_count, length, dtype=torch.long, device=self.device)
        image_index = image_index.index_put((rows, columns), within.repeat(len(image_rows)))
        logdet = shallow_logdet.new_zeros(rows_count).index_add(0, image_rows, shallow_logdet)
        return tokens, image_index, logdet

    def check_layout(self, batch, count: Tensor) -> None:
        """Each row's image positions are exactly its images' T tokens, and the sequence fits the context."""
        self.check_length(batch.ids.shape[1])
        positions = batch.is_image.sum(1).to(self.device)
        if not torch.equal(positions, count * self.image_tokens):
            raise InputError(f"the batch marks {positions.tolist()} image positions per row but holds "
                             f"{count.tolist()} images of {self.image_tokens} tokens each: is_image must cover "
                             f"exactly each image's tokens")

    def log_likelihood(self, batch, noise: Tensor | None = None) -> JointLikelihood:
        """log p of each sequence's words and images (see `JointLikelihood`), nats per row; ``noise`` is added to
        the images (the density is then of the noisy images)."""
        tokens, image_index, shallow_logdet = self.sequence_tokens(batch, noise)
        ids, is_image = batch.ids.to(self.device), batch.is_image.to(self.device)
        lengths = batch.lengths.to(self.device)
        word_log_probs, params = self.step(ids, tokens, is_image, None, 0, image_index)
        targets, target_is_image = ids[:, 1:], is_image[:, 1:]
        in_sequence = torch.arange(1, ids.shape[1], device=self.device) < lengths[:, None]
        is_text_target = ~target_is_image & in_sequence
        word_scores = word_log_probs[:, :-1].gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
        text = torch.where(is_text_target, word_scores, 0).sum(1)
        image_positions = target_is_image.nonzero()
        selected = tuple(param[:, :-1][target_is_image][:, None] for param in params)  # (N, 1, D) each
        z, deep_logdet = self.transform.forward(tokens[:, 1:][target_is_image][:, None], selected)
        densities = self.prior.log_prob(z) + deep_logdet
        image = shallow_logdet + densities.new_zeros(len(ids)).index_add(0, image_positions[:, 0], densities)
        image_dims = batch.image_count.to(self.device) * self.modality.num_dims
        return JointLikelihood(text, image, is_text_target.sum(1), image_dims)

    # ----- save / load ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return save_model(self, path, metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Pretzel":
        return load_model(cls, path, map_location)


def zero_linear(fan_in: int, fan_out: int) -> nn.Linear:
    """A linear layer that starts at zero (a skip that starts closed; a head that starts as the identity flow)."""
    layer = nn.Linear(fan_in, fan_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
