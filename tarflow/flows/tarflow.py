"""TarFlow: patchify, N autoregressive flow blocks with alternating token order, Gaussian prior."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from .. import __version__
from ..configs import from_dict
from ..errors import CheckpointError, ConfigError, InputError
from ..io import atomic_files, existing_dir, write_bytes
from .block import ARFlowBlock, Guide
from .config import FlowConfig

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# Every file of a model directory the library owns, in commit order (config.json, which marks it as ours, last);
# sampling.json is the sampler calibration of the previous weights: a new save removes it.
OWNED_FILES = (WEIGHTS_NAME, "sampling.json", CONFIG_NAME)


class TarFlow(nn.Module):
    """Image density p(x) by change of variables: log p(x) = log N(z; 0, s^2) + log|det dz/dx|.

    ``forward(x, y) -> (z, logdet)`` maps data (B, C, H, W) in [-1, 1] to noise of the same shape;
    ``inverse(z, y)`` maps back. Block i flips the token order when i is odd. With
    ``transform="additive"`` the prior has a learned std s per token dimension, otherwise s = 1.
    """

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = {}  # what `save_pretrained` stored beside the architecture
        self.blocks = nn.ModuleList(ARFlowBlock(config, flip=i % 2 == 1) for i in range(config.num_blocks))
        self.prior_log_std = None
        if config.transform == "additive":
            self.prior_log_std = nn.Parameter(torch.zeros(config.num_tokens, config.token_dim))

    # ----- labels and inputs -------------------------------------------------------------------
    @property
    def null_class(self) -> int | None:
        """The label of the unconditional branch of a class-conditional model (None if unconditional)."""
        return self.config.num_classes or None

    def check_labels(self, y: Tensor | None, batch: int) -> Tensor | None:
        n = self.config.num_classes
        if not n:
            if y is not None:
                raise InputError("this model is unconditional (num_classes=0): pass y=None")
            return None
        if y is None:
            raise InputError(f"this model is class-conditional with {n} classes: pass labels y of shape "
                             f"({batch},) with values 0..{n - 1}, or {n} (the null class) for unconditional")
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (batch,):
            raise InputError(f"labels y must be integers of shape ({batch},), got dtype {y.dtype}, "
                             f"shape {tuple(y.shape)}")
        if batch and (int(y.min()) < 0 or int(y.max()) > n):
            raise InputError(f"labels y must lie in 0..{n - 1} (or {n}, the null class), "
                             f"got values {int(y.min())}..{int(y.max())}")
        return y.to(device=self.device, dtype=torch.long)

    def check_images(self, x: Tensor, name: str = "x") -> None:
        c = self.config
        expected = f"(B, {c.channels}, {c.image_size}, {c.image_size})"
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"{name} must be a batch of images {expected}, got {shape}")
        if x.shape[1] != c.channels:
            raise InputError(f"{name} has {x.shape[1]} channels but the model expects {c.channels}: "
                             f"expected shape {expected}, got {tuple(x.shape)}")
        if x.shape[2:] != (c.image_size, c.image_size):
            raise InputError(f"{name} is {x.shape[2]}x{x.shape[3]} but the model expects "
                             f"{c.image_size}x{c.image_size}: resize or crop the images")
        if not x.dtype.is_floating_point:
            raise InputError(f"{name} must be floating point in [-1, 1], got {x.dtype}; "
                             f"dequantize integer images first")
        if not torch.isfinite(x).all():
            raise InputError(f"{name} contains NaN or inf values")

    @property
    def device(self) -> torch.device:
        return self.blocks[0].pos_embed.device

    # ----- tokens ------------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, p*p*C), tokens in raster order."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        c = self.config
        B, p, n = tokens.shape[0], c.patch_size, c.image_size // c.patch_size
        x = tokens.reshape(B, n, n, p, p, c.channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c.channels, c.image_size, c.image_size)

    # ----- density -----------------------------------------------------------------------------
    def flow(self, tokens: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
        """Tokens (B, T, D) through every block: (z tokens, logdet (B,) in nats). No input checks."""
        logdet = tokens.new_zeros(tokens.shape[0], dtype=torch.promote_types(tokens.dtype, torch.float32))
        for block in self.blocks:
            tokens, ld = block(tokens, y, attn_temp)
            logdet = logdet + ld
        return tokens, logdet

    def prior_std(self) -> Tensor | None:
        """Per token-dimension std of the prior (T, D), or None for the standard normal."""
        return None if self.prior_log_std is None else self.prior_log_std.exp()

    def prior_log_prob(self, z_tokens: Tensor) -> Tensor:
        """log N(z; 0, s^2) summed per sample, nats; s = 1 unless additive with likelihood_prior="learned"."""
        z = z_tokens.to(torch.promote_types(z_tokens.dtype, torch.float32))
        lp = -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)
        if self.prior_log_std is not None and self.config.likelihood_prior == "learned":
            log_s = self.prior_log_std.to(z.dtype)
            lp = -0.5 * (z * torch.exp(-log_s)).pow(2) - log_s - 0.5 * math.log(2 * math.pi)
        return lp.sum(dim=(1, 2))

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) in [-1, 1] -> (z of the same shape, log|det dz/dx| (B,) in nats)."""
        self.check_images(x)
        y = self.check_labels(y, x.shape[0])
        z, logdet = self.flow(self.patchify(x), y)
        return self.unpatchify(z), logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None, validate: bool = True) -> Tensor:
        """log p(x | y) per sample, in nats (a density: it can be positive).

        ``validate=False`` skips the input checks (shape, labels, NaN), whose data-dependent branches would
        break a `torch.compile` graph: for callers that check their batches themselves, like the trainer.
        """
        if validate:
            self.check_images(x)
            y = self.check_labels(y, x.shape[0])
        z, logdet = self.flow(self.patchify(x), y)
        return self.prior_log_prob(z) + logdet

    @torch.no_grad()
    def inverse(self, z: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None,
                guide: Guide | None = None) -> Tensor:
        """z (B, C, H, W) -> x, exactly, block by block in reverse, each token by token (KV cache).

        ``attn_temp`` and ``guide`` are for samplers (see `ARFlowBlock.inverse`); with them, ``y``
        and ``attn_temp`` hold several branches of the batch stacked and are not checked here.
        """
        self.check_images(z, "z")
        if guide is None:
            y = self.check_labels(y, z.shape[0])
        tokens = self.patchify(z)
        for block in reversed(self.blocks):
            tokens = block.inverse(tokens, y, attn_temp, guide)
        return self.unpatchify(tokens)

    # ----- save / load -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (architecture, library version, metadata) and ``model.safetensors`` into ``path``.

        Only the library's own files are replaced (atomically: a crash leaves the previous save loadable);
        other entries of ``path`` are kept. A directory holding a config.json or model.safetensors that is
        not a tarflow model's, or a file at ``path``, is refused with an `OutputError` (see `atomic_files`).
        """
        config = {"format": "tarflow", "format_version": FORMAT_VERSION, "tarflow_version": __version__,
                  "model": dataclasses.asdict(self.config), "metadata": metadata or {}}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_files(path, OWNED_FILES, is_model_dir) as tmp:  # bytes written by Python: a full disk is an OutputError with its cause
            write_bytes(tmp / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
            write_bytes(tmp / WEIGHTS_NAME, safetensors_bytes(state))
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "TarFlow":
        """Rebuild a model from a `save_pretrained` directory; no architecture arguments needed."""
        model_dir = existing_dir(path)
        if model_dir is None:
            raise CheckpointError(f"no saved model at {path}: expected a directory with "
                                  f"{CONFIG_NAME} and {WEIGHTS_NAME}")
        config = read_config(model_dir)
        model = cls(config)
        # assign=True keeps each saved tensor's dtype: a float64 save must not come back as float32.
        model.load_state_dict(read_weights(model_dir / WEIGHTS_NAME, model), strict=True, assign=True)
        model.metadata = read_config_json(model_dir).get("metadata", {})
        return model.to(map_location)


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a config.json that `save_pretrained` wrote ("format": "tarflow")."""
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text()).get("format") == "tarflow"
    except (OSError, ValueError, AttributeError):
        return False


def read_config_json(model_dir: Path) -> dict[str, Any]:
    file = Path(model_dir) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: a saved model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the file is truncated or corrupt") from None
    if not isinstance(data, dict) or data.get("format") != "tarflow":
        raise CheckpointError(f"{file} is not a tarflow model config (no \"format\": \"tarflow\")")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} was written in checkpoint format {version} by tarflow {data.get('tarflow_version')}; "
            f"this tarflow ({__version__}) reads format {FORMAT_VERSION}. Use the tarflow version that wrote it, "
            f"or convert the checkpoint.")
    return data


def read_config(model_dir: Path) -> FlowConfig:
    data = read_config_json(model_dir)
    try:
        return from_dict(FlowConfig, data.get("model", {}), "model config")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{Path(model_dir) / CONFIG_NAME}: {e}") from None


def read_weights(file: Path, model: nn.Module) -> dict[str, Tensor]:
    """Load a safetensors file and check that its tensors match ``model``'s one for one."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the directory {file.parent} is incomplete")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read ({e}); the file is truncated or corrupt") from None
    check_state(state, model.state_dict(), file)
    return state


def check_state(state: dict[str, Tensor], expected: dict[str, Tensor], source: Any) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: {tuple(state[k].shape)} "
                         f"saved, {tuple(expected[k].shape)} expected)")
        raise CheckpointError(f"{source} does not match the model layout: {'; '.join(parts)}. "
                              f"It was written by a different layout or version of tarflow.")
