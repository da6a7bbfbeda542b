"""What the library's small learned denoisers share (STARFlow-V's flow-score denoiser, NTM's self-distilled one):
a Transformer over a model's tokens whose zero-initialised output starts as "no correction", saved as a directory
``config.json`` (a format name and the config) + ``model.safetensors``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes, atomic_write_text
from ..progress import progress_bar


def check_config(config) -> None:
    """What every small denoiser's config must hold: width divisible by heads, sigma (the noise std it removes,
    model-space units) positive and finite."""
    if config.width % config.heads:
        raise ConfigError(f"width={config.width} is not divisible by heads={config.heads}")
    if not 0 < config.sigma < float("inf"):
        raise ConfigError(f"sigma (the noise std the denoiser removes) must be positive and finite, got "
                          f"{config.sigma}")


class SmallDenoiser(nn.Module):
    """Base class: ``build`` makes the network, ``correction`` runs it; subclasses name their ``FORMAT``, config
    type ``CONFIG``, what they are (``NOUN``) and how to make one (``HOW``), for the save format and its errors."""

    FORMAT: str
    CONFIG: type
    NOUN: str
    HOW: str

    def build(self, tokens: int, in_dim: int, out_dim: int, width: int, layers: int, heads: int) -> None:
        """Input projection, learned positions, pre-norm Transformer layers, zero-initialised output projection."""
        self.proj_in = nn.Linear(in_dim, width)
        self.pos_embed = nn.Parameter(torch.randn(tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj_out = nn.Linear(width, out_dim)
        nn.init.zeros_(self.proj_out.weight)  # starts as no correction
        nn.init.zeros_(self.proj_out.bias)

    def correction(self, tokens: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """(B, T, in_dim) -> (B, T, out_dim); ``mask`` True where attention is not allowed; ``bias`` (B, 1, width)
        added to every token's input (e.g. a class embedding)."""
        h = self.proj_in(tokens) + self.pos_embed
        return self.proj_out(self.layers(h if bias is None else h + bias, mask=mask))

    def fit(self, draw_batch: Callable[[], tuple[tuple[Tensor, ...], Tensor]], steps: int, lr: float,
            progress: bool = False, desc: str = "fitting denoiser") -> list[float]:
        """``steps`` AdamW steps on mean over dims of (self(*inputs) - target)^2, (inputs, target) = draw_batch()
        (the target computed without gradient to this network); the loss of every step. Leaves it in eval mode."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr)
        losses = []
        bar = progress_bar(total=steps, desc=desc, enabled=progress, unit="step")
        for _ in range(steps):
            inputs, target = draw_batch()
            loss = (self(*inputs) - target).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
        bar.close()
        self.eval()
        return losses

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / "model.safetensors", save({k: v.contiguous() for k, v in self.state_dict().items()}))
        atomic_write_text(path / "config.json", json.dumps({"format": self.FORMAT, "config": asdict(self.config)},
                                                           indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path):
        path = Path(path)
        try:
            data = json.loads((path / "config.json").read_text())
            if data.get("format") != cls.FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {cls.FORMAT!r}")
            state = load_file(path / "model.safetensors")
            denoiser = cls(cls.CONFIG(**data["config"])).to(state["proj_in.weight"].dtype)
            denoiser.load_state_dict(state)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a saved {cls.NOUN} ({type(e).__name__}: {e}); {cls.HOW}") from None
        return denoiser.eval()


def loss_summary(losses: list[float]) -> dict[str, float]:
    """The mean loss of the first and of the last tenth of a fit's steps (what the fitting commands print)."""
    window = max(1, len(losses) // 10)
    return {"loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window}
