"""Flow-score matching (STARFlow-V): a small causal denoiser in place of the flow's one-step Tweedie.

Tweedie's correction d(y) = sigma^2 grad_y log p(y) needs a backward pass through the whole flow, and for video
it is not causal: the score of frame f holds terms of every later frame. The denoiser is a small Transformer
over the same frame-major tokens, block-causal over frames (a token of frame f sees every token of frames
<= f), trained to match the flow's own correction on noisy clips y = x + sigma eps:

    loss = mean over dims of (d_theta(y) - sigma^2 grad_y log p_flow(y))^2

and at sampling x_hat = y + d_theta(y): one forward of a small network, frame by frame if need be. sigma is the
flow's training noise std. Saved as a directory: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_bytes, atomic_write_text
from ..modalities import Video


@dataclass
class ScoreDenoiserConfig:
    """The clip geometry of the flow it denoises, sigma, and the Transformer's size."""

    frame_count: int
    image_size: int
    channels: int
    patch_size: int
    sigma: float
    width: int = 64
    layers: int = 2
    heads: int = 2

    def __post_init__(self):
        if self.width % self.heads:
            raise ConfigError(f"width={self.width} is not divisible by heads={self.heads}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma (the flow's training noise std) must be positive, got {self.sigma}")


class CausalScoreDenoiser(nn.Module):
    """d(y): noisy clips (B, F, C, H, W) -> the correction (same shape) that takes them to E[x | y]."""

    def __init__(self, config: ScoreDenoiserConfig):
        super().__init__()
        self.config = config
        self.modality = Video(config.frame_count, config.image_size, config.channels, config.patch_size)
        tokens, token_dim = self.modality.num_tokens, self.modality.token_dim
        self.proj_in = nn.Linear(token_dim, config.width)
        self.pos_embed = nn.Parameter(torch.randn(tokens, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(config.width, config.heads, 4 * config.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.proj_out = nn.Linear(config.width, token_dim)
        nn.init.zeros_(self.proj_out.weight)  # starts as no correction
        nn.init.zeros_(self.proj_out.bias)
        frame = torch.arange(tokens) // self.modality.tokens_per_frame
        self.register_buffer("hidden", frame[None, :] > frame[:, None], persistent=False)  # later frames

    def forward(self, noisy: Tensor) -> Tensor:
        h = self.proj_in(self.modality.to_tokens(noisy)) + self.pos_embed
        h = self.layers(h, mask=self.hidden)
        return self.modality.from_tokens(self.proj_out(h))

    @torch.no_grad()
    def denoise(self, noisy: Tensor) -> Tensor:
        """x_hat = y + d(y)."""
        return noisy + self(noisy)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / "model.safetensors", save({k: v.contiguous() for k, v in self.state_dict().items()}))
        atomic_write_text(path / "config.json", json.dumps({"format": "tarflow-score-denoiser",
                                                            "config": asdict(self.config)}, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "CausalScoreDenoiser":
        path = Path(path)
        try:
            data = json.loads((path / "config.json").read_text())
            state = load_file(path / "model.safetensors")
            denoiser = cls(ScoreDenoiserConfig(**data["config"])).to(state["proj_in.weight"].dtype)
            denoiser.load_state_dict(state)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a saved score denoiser ({type(e).__name__}: {e}); train one with "
                                  f"tarflow.sampling.flow_score.fit_score_denoiser") from None
        return denoiser.eval()


def flow_correction(model, noisy: Tensor, sigma: float, y: Tensor | None = None) -> Tensor:
    """The flow's Tweedie correction sigma^2 grad_y log p(y), the denoiser's target."""
    with torch.enable_grad():
        noisy = noisy.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(model.log_prob(noisy, y).sum(), noisy)
    return (sigma ** 2 * score).detach()


def fit_score_denoiser(model, clips: Tensor, levels: int, sigma: float, steps: int = 500, batch_size: int = 16,
                       lr: float = 1e-3, width: int = 64, layers: int = 2, seed: int = 0
                       ) -> tuple[CausalScoreDenoiser, list[float]]:
    """A `CausalScoreDenoiser` fitted to the flow's corrections on uint8 training ``clips`` (N, F, C, H, W) with
    noise ``sigma`` (the flow's training noise std); returns it and the loss of every step."""
    from ..data import dequantize

    if model.config.modality != "video":
        raise ConfigError("flow-score matching needs a video model (modality=video)")
    c = model.config
    denoiser = CausalScoreDenoiser(ScoreDenoiserConfig(c.frame_count, c.image_size, c.channels, c.patch_size, sigma,
                                                       width, layers)).to(model.device, model.dtype)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, clips.shape[0], (batch_size,), generator=generator)
        noisy = dequantize(clips[rows], levels, "gaussian", sigma, generator=generator).to(model.device, model.dtype)
        target = flow_correction(model, noisy, sigma)
        loss = (denoiser(noisy) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return denoiser.eval(), losses


class ScoreDenoisedSampler:
    """``sampler``'s samples (drawn without denoising), then x_hat = y + d(y) by the fitted denoiser."""

    def __init__(self, sampler, denoiser: CausalScoreDenoiser):
        self.sampler, self.denoiser, self.model = sampler, denoiser, sampler.model

    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance=None,
               denoise_std: float | None = None, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        noisy = self.sampler.sample(n, y, temperature, guidance, None, generator=generator, **kwargs)
        return self.denoiser.denoise(noisy)
