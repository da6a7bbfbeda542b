"""The text prefix of a caption-conditioned block: caption ids -> text encoder -> linear projection to the flow
width -> P positions in front of the block's tokens (STARFlow's text conditioning of the deep block).

Two text encoders: ``learned`` (`LearnedTextEncoder`, trained jointly with the flow from scratch: word embedding +
positions + bidirectional Transformer layers) or a directory of a Hugging Face model (`PretrainedTextEncoder`: T5,
CLIP-text or any ``transformers`` encoder with its tokenizer, frozen, its last hidden state; the optional ``text``
extra). The null caption (rows of `NULL`) is a learned prefix of its own.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import TransformerLayer
from .captions import NULL, CaptionConditioning, PretrainedTokenizer, WordTokenizer

LEARNED = "learned"
EXPECTED_FILES = ("config.json, the weights (model.safetensors or pytorch_model.bin) and the tokenizer "
                  "(tokenizer.json, or the files of a slow tokenizer such as spiece.model or vocab.json + merges.txt), "
                  "as save_pretrained writes them")


class LearnedTextEncoder(nn.Module):
    """Word ids (R, P) -> features (R, P, W): embedding + learned positions, ``layers`` bidirectional pre-norm
    Transformer layers, LayerNorm. Padding has an embedding of its own (it is a function of the caption too)."""

    def __init__(self, vocabulary_size: int, length: int, width: int, head_dim: int, layers: int):
        super().__init__()
        self.width = width
        self.embed = nn.Embedding(vocabulary_size + 1, width)  # the last row: padding
        self.pos_embed = nn.Parameter(torch.randn(length, width) * 0.02)
        self.layers = nn.ModuleList(TransformerLayer(width, head_dim, 2, causal=False) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor) -> Tensor:
        ids = torch.where(ids < 0, self.embed.num_embeddings - 1, ids)
        h = self.embed(ids) + self.pos_embed
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


class PretrainedTextEncoder(nn.Module):
    """A frozen Hugging Face encoder: ids (R, P) -> its last hidden state (R, P, width), zero at padding.

    Its weights are not this module's parameters: they are not saved with the flow, not trained and not cast with
    it (the flow's config names the directory); they follow the ids' device on first use.
    """

    def __init__(self, directory: str):
        super().__init__()
        model = load_pretrained(directory)[0]
        self.__dict__["model"] = model  # not a submodule: the state dict and .to() leave it out
        config = model.config
        self.width = getattr(config, "hidden_size", None) or getattr(config, "d_model")

    def forward(self, ids: Tensor) -> Tensor:
        model = self.model
        if next(model.parameters()).device != ids.device:
            model.to(ids.device)
        mask = ids >= 0
        with torch.no_grad():
            hidden = model(input_ids=ids.clamp_min(0), attention_mask=mask.long()).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)


@functools.lru_cache(maxsize=4)
def load_pretrained(directory: str):
    """(frozen encoder model, tokenizer) of a Hugging Face directory, or a ConfigError naming what was expected."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("text_encoder names a Hugging Face directory, which needs transformers: "
                          "pip install 'tarflow[text]'") from None
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"text encoder directory {str(path)!r} holds no config.json: expected a Hugging Face "
                          f"text encoder with {EXPECTED_FILES}")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        architecture = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, architecture or "", None) or transformers.AutoModel
        model = model_class.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"text encoder directory {str(path)!r} could not be loaded ({error}): expected "
                          f"{EXPECTED_FILES}") from None
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # T5: the encoder alone
    if not (getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)):
        raise ConfigError(f"the model in {str(path)!r} ({type(model).__name__}) has no hidden_size or d_model: "
                          f"expected a text encoder such as T5EncoderModel or CLIPTextModel")
    return model.eval().requires_grad_(False), tokenizer


class TextPrefix(nn.Module):
    """Caption ids (R, P) -> the prefix (R, P, W) at the block's width: projected encoder features, or the learned
    null prefix for null-caption rows."""

    def __init__(self, config, width: int):
        super().__init__()
        self.length = config.caption_length
        if config.text_encoder == LEARNED:
            vocabulary = config.caption_vocabulary.split()
            self.encoder = LearnedTextEncoder(len(vocabulary), self.length, width, config.head_dim, config.text_layers)
        else:
            self.encoder = PretrainedTextEncoder(config.text_encoder)
        self.proj = nn.Linear(self.encoder.width, width)
        self.null = nn.Parameter(torch.randn(self.length, width) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        null_rows = (ids[:, 0] == NULL)[:, None, None]
        features = self.proj(self.encoder(ids).to(self.proj.weight.dtype))
        return torch.where(null_rows, self.null, features)


def caption_conditioning(config) -> CaptionConditioning:
    """The `CaptionConditioning` of a caption-conditioned config (its tokenizer: ours or the directory's)."""
    if config.text_encoder == LEARNED:
        tokenizer = WordTokenizer(config.caption_vocabulary.split(), config.caption_length)
    else:
        tokenizer = PretrainedTokenizer(load_pretrained(config.text_encoder)[1], config.caption_length)
    return CaptionConditioning(tokenizer, config.captions, config.num_classes, config.caption_length)
