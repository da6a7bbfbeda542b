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

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..modalities import Pixels, Video
from .denoise import tweedie_correction
from .small_denoiser import SmallDenoiser, check_config


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
        check_config(self)


class CausalScoreDenoiser(SmallDenoiser):
    """d(y): noisy clips (B, F, C, H, W) -> the correction (same shape) that takes them to E[x | y]."""

    FORMAT, CONFIG, NOUN = "tarflow-score-denoiser", ScoreDenoiserConfig, "score denoiser"
    HOW = "train one with `tarflow fit-score-denoiser RUN`"

    def __init__(self, config: ScoreDenoiserConfig):
        super().__init__()
        self.config = config
        self.modality = Video(config.frame_count, Pixels(config.image_size, config.channels, config.patch_size))
        tokens, token_dim = self.modality.num_tokens, self.modality.token_dim
        self.build(tokens, token_dim, token_dim, config.width, config.layers, config.heads)
        frame = torch.arange(tokens) // self.modality.tokens_per_frame
        self.register_buffer("hidden", frame[None, :] > frame[:, None], persistent=False)  # later frames

    def forward(self, noisy: Tensor) -> Tensor:
        return self.modality.from_tokens(self.correction(self.modality.to_tokens(noisy), self.hidden))

    @torch.no_grad()
    def denoise(self, noisy: Tensor) -> Tensor:
        """x_hat = y + d(y)."""
        return noisy + self(noisy)


def flow_correction(model, noisy: Tensor, sigma: float, y: Tensor | None = None) -> Tensor:
    """The flow's Tweedie correction sigma^2 grad_y log p(y), the denoiser's target."""
    return tweedie_correction(lambda clips: model.log_prob(clips, y), noisy, sigma)


def fit_score_denoiser(model, clips: Tensor, levels: int, sigma: float, steps: int = 500, batch_size: int = 16,
                       lr: float = 1e-3, width: int = 64, layers: int = 2, seed: int = 0
                       ) -> tuple[CausalScoreDenoiser, list[float]]:
    """A `CausalScoreDenoiser` fitted to the flow's corrections on uint8 training ``clips`` (N, F, C, H, W) with
    noise ``sigma`` (the flow's training noise std; on the scaled latents of latent frames, which the denoiser then
    works on); returns it and the loss of every step."""
    from ..data import dequantize

    if model.config.modality != "video":
        raise ConfigError("flow-score matching needs a video model (modality=video)")
    c = model.config
    denoiser = CausalScoreDenoiser(ScoreDenoiserConfig(c.frame_count, c.image_size, c.channels, c.patch_size, sigma,
                                                       width, layers)).to(model.device, model.dtype)
    generator = torch.Generator().manual_seed(seed)
    model.eval()

    def draw_batch():
        rows = torch.randint(0, clips.shape[0], (batch_size,), generator=generator)
        if model.modality.latent:  # the noise is added to the scaled latents of the frames, as in training
            centres = dequantize(clips[rows], levels, "gaussian", 0.0).to(model.device, model.dtype)
            clean = model.modality.encode(centres)
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator).to(clean)
        else:
            noisy = dequantize(clips[rows], levels, "gaussian", sigma, generator=generator).to(model.device, model.dtype)
        return (noisy,), flow_correction(model, noisy, sigma)

    return denoiser, denoiser.fit(draw_batch, steps, lr)


class ScoreDenoisedSampler:
    """``sampler``'s samples (drawn without denoising), then x_hat = y + d(y) by the fitted denoiser."""

    def __init__(self, sampler, denoiser: CausalScoreDenoiser):
        self.sampler, self.denoiser, self.model = sampler, denoiser, sampler.model

    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance=None,
               denoise_std: float | None = None, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        noisy = self.sampler.sample(n, y, temperature, guidance, None, generator=generator, **kwargs)
        return self.denoiser.denoise(noisy)
