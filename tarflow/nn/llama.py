"""Decoder layers of a local Hugging Face causal language model of the Llama family, as our own modules.

Llama, Mistral, Qwen2, Qwen3 and SmolLM share one layer (pre-norm, RMSNorm, grouped-query attention with RoPE,
a SwiGLU MLP):

    h <- h + o(Attention(RMSNorm(h)))        queries of ``heads`` heads, keys/values of ``kv_heads`` (GQA)
    h <- h + down(silu(gate(x)) * up(x)),    x = RMSNorm(h)

with q/k/v biases in Qwen2 (all four with ``attention_bias`` in Llama and Qwen3) and a per-head RMSNorm of
queries and keys (before RoPE) in Qwen3. `LlamaSpec` reads the sizes from the directory's config.json;
`llama_layers` builds the layers and `load_llama_weights` fills them from ``model.safetensors`` (one file or shards)
or ``pytorch_model.bin``; `word_rows` gives words the LM's embedding and head rows through its tokenizer. Our
modules carry Hugging Face's parameter names, so ``model.layers.{i}.*`` loads as it is. Reading the weights needs
neither ``transformers`` nor a network; being ours, the layers run in any dtype (float64 included) and share the
library's KV cache and masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .attention import LayerCache
from .rotary import Rotary
from .transformer import residual_dropout

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
LAYER_PREFIX = "model.layers."


@dataclass(frozen=True)
class LlamaSpec:
    """The sizes of a Llama-family decoder, from its config.json (`from_json`)."""

    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_base: float
    qkv_bias: bool
    output_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_json(cls, text: str, context: int) -> "LlamaSpec":
        """The spec of a config.json's text; a ConfigError for what these layers do not reproduce."""
        config = json.loads(text)
        family = config.get("model_type")
        if family not in FAMILIES:
            raise ConfigError(f"language model of model_type {family!r}: supported are the Llama family "
                              f"{', '.join(FAMILIES)} (SmolLM is llama)")
        if config.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"language model with hidden_act={config['hidden_act']!r}: these layers use silu")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"language model with RoPE scaling {rope_type!r}: only the default RoPE is supported")
        window = config.get("sliding_window")
        sliding = config.get("use_sliding_window", family == "mistral")
        if sliding and window is not None and window < context:
            raise ConfigError(f"language model with a sliding window of {window} positions, shorter than the "
                              f"context ({context}): these layers attend to every earlier position")
        heads, hidden = config["num_attention_heads"], config["hidden_size"]
        attention_bias = family in ("llama", "qwen3") and bool(config.get("attention_bias", False))
        return cls(hidden_size=hidden, layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or hidden // heads,
                   intermediate_size=config["intermediate_size"], norm_eps=config.get("rms_norm_eps", 1e-6),
                   rope_base=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
                   qkv_bias=family == "qwen2" or attention_bias, output_bias=family != "qwen2" and attention_bias,
                   mlp_bias=bool(config.get("mlp_bias", False)), qk_norm=family == "qwen3")


def read_config_text(directory: str) -> str:
    """The text of a Hugging Face model directory's config.json, or a ConfigError naming what was expected."""
    path = Path(directory).expanduser() / "config.json"
    if not path.is_file():
        raise ConfigError(f"language model directory {directory!r} holds no config.json: expected a Hugging Face "
                          f"causal LM of the Llama family as save_pretrained writes it (config.json and "
                          f"model.safetensors)")
    return path.read_text()


class LlamaAttention(nn.Module):
    """Grouped-query causal attention with RoPE (pairs i and i + head_dim / 2, as Hugging Face turns them)."""

    def __init__(self, spec: LlamaSpec, context: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.hidden_size, spec.heads * spec.head_dim, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(spec.hidden_size, spec.kv_heads * spec.head_dim, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(spec.hidden_size, spec.kv_heads * spec.head_dim, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.heads * spec.head_dim, spec.hidden_size, bias=spec.output_bias)
        if spec.qk_norm:
            self.q_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps)
            self.k_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps)
        self.rotary = Rotary(spec.head_dim, context, spec.rope_base, halves=True)

    def heads_of(self, projection: nn.Linear, rows: Tensor, batch: int, length: int) -> Tensor:
        """(B L, W) -> (B, heads, L, head_dim)."""
        return projection(rows).view(batch, length, -1, self.head_dim).transpose(1, 2)

    def forward(self, rows: Tensor, cache: LayerCache | None, pos: int, shape: tuple[int, int]) -> Tensor:
        """Rows (B L, W) of positions pos .. pos+L-1 -> (B L, W); with ``cache``, earlier positions come from it."""
        batch, length = shape
        q = self.heads_of(self.q_proj, rows, batch, length)
        k = self.heads_of(self.k_proj, rows, batch, length)
        v = self.heads_of(self.v_proj, rows, batch, length)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, pos), self.rotary(k, pos)
        mask = None
        if cache is not None:
            k, v = cache.extend(k, v, pos)
            mask = cache.mask(pos, length)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=cache is None and length > 1)
        return self.o_proj(y.transpose(1, 2).reshape(batch * length, -1))


class LlamaMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, spec: LlamaSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=spec.mlp_bias)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.mlp_bias)

    def forward(self, rows: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(rows)) * self.up_proj(rows))


class LlamaLayer(nn.Module):
    """One decoder layer, called as `tarflow.nn.TransformerLayer` is (rows and ``shape``, or (B, L, W)).
    ``attn`` is its attention (the KV cache reads its ``kv_heads`` and ``head_dim``)."""

    def __init__(self, spec: LlamaSpec, context: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout  # residual dropout in training, as `TransformerLayer`'s
        self.input_layernorm = nn.RMSNorm(spec.hidden_size, eps=spec.norm_eps)
        self.self_attn = LlamaAttention(spec, context)
        self.post_attention_layernorm = nn.RMSNorm(spec.hidden_size, eps=spec.norm_eps)
        self.mlp = LlamaMLP(spec)

    @property
    def attn(self) -> LlamaAttention:
        return self.self_attn

    def forward(self, h: Tensor, attn_temp: Tensor | None = None, cache: LayerCache | None = None, pos: int = 0,
                shape: tuple[int, int] | None = None) -> Tensor:
        if attn_temp is not None:
            raise ValueError("a language model layer has no attention temperature")
        rows = h if shape is not None else h.reshape(-1, h.shape[-1])
        mixed = self.self_attn(self.input_layernorm(rows), cache, pos, shape or tuple(h.shape[:2]))
        rows = rows + residual_dropout(mixed, self.dropout, self.training)
        rows = rows + residual_dropout(self.mlp(self.post_attention_layernorm(rows)), self.dropout, self.training)
        return rows if shape is not None else rows.view(h.shape)


def llama_layers(spec: LlamaSpec, context: int, dropout: float = 0.0) -> nn.ModuleList:
    """The spec's decoder layers, freshly initialised (`load_llama_weights` fills them)."""
    return nn.ModuleList(LlamaLayer(spec, context, dropout) for _ in range(spec.layers))


def load_llama_weights(layers: nn.ModuleList, directory: str, tensors: dict[str, Tensor] | None = None) -> None:
    """Copy the directory's ``model.layers.*`` tensors (``tensors``: as `read_tensors` read them) into ``layers``
    (cast to their dtype); a ConfigError when the weights are missing or do not fit."""
    tensors = read_tensors(Path(directory).expanduser()) if tensors is None else tensors
    state = {name.removeprefix(LAYER_PREFIX): tensor for name, tensor in tensors.items()
             if name.startswith(LAYER_PREFIX)}
    try:
        layers.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"the weights in {directory!r} do not fit the layers its config.json describes: "
                          f"{error}") from None


def word_rows(directory: str, tensors: dict[str, Tensor], words: list[str]) -> tuple[Tensor, Tensor, Tensor] | None:
    """Our words in the LM's own terms: for each word, the mean over the tokens of " word" (the directory's
    tokenizer.json) of the LM's input-embedding rows and of its output-head rows (the embedding when tied):
    (inputs (V, W), outputs (V, W), known (V,) bool: False for <...> words, kept as they are). None without a
    tokenizer.json or the ``tokenizers`` package (a part of transformers)."""
    path = Path(directory).expanduser() / "tokenizer.json"
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    if not path.is_file():
        return None
    tokenizer = Tokenizer.from_file(str(path))
    embedding = tensors["model.embed_tokens.weight"]
    head = tensors.get("lm_head.weight", embedding)
    known = torch.tensor([not word.startswith("<") for word in words])
    inputs, outputs = torch.zeros(len(words), embedding.shape[1]), torch.zeros(len(words), head.shape[1])
    for index, word in enumerate(words):
        tokens = tokenizer.encode(" " + word, add_special_tokens=False).ids if known[index] else []
        if tokens:
            inputs[index] = embedding[tokens].float().mean(0)
            outputs[index] = head[tokens].float().mean(0)
    return inputs, outputs, known


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a directory's model.safetensors (or its shards) or pytorch_model.bin, on the CPU."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {name: tensor for shard in shards for name, tensor in load_file(path / shard).items()}
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError(f"language model directory {str(path)!r} holds no weights: expected model.safetensors (or "
                      f"its shards with model.safetensors.index.json) or pytorch_model.bin")
