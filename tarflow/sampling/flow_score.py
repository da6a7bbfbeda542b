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
                       lr: float = 1e-3, width: int = 64, layers: int = 2, seed: int = 0, progress: bool = False,
                       labels: Tensor | None = None) -> tuple[CausalScoreDenoiser, list[float]]:
    """A `CausalScoreDenoiser` fitted to the flow's corrections on uint8 training ``clips`` (N, F, C, H, W) with
    noise ``sigma`` (the flow's training noise std; on the scaled latents of latent frames, which the denoiser then
    works on); returns it and the loss of every step.

    A class-conditional flow needs the clips' ``labels`` (N,): the target of a clip is the correction given its
    own class, sigma^2 grad log p(y | c), so the label-free denoiser regresses onto their mean over the classes
    of clips that look like y, E[x | y] (the same marginal posterior mean Tweedie gives an unconditional flow)."""
    if model.config.modality != "video":
        raise ConfigError("flow-score matching needs a video model (modality=video)")
    if bool(model.config.num_classes) != (labels is not None):
        wanted = "the clips' labels (N,)" if model.config.num_classes else "None"
        raise ConfigError(f"fit_score_denoiser: the flow has {model.config.num_classes} classes, so labels must be "
                          f"{wanted}")
    c = model.config
    denoiser = CausalScoreDenoiser(ScoreDenoiserConfig(c.frame_count, c.image_size, c.channels, c.patch_size, sigma,
                                                       width, layers)).to(model.device, model.dtype)
    generator = torch.Generator().manual_seed(seed)
    model.eval()

    def draw_batch():
        rows = torch.randint(0, clips.shape[0], (batch_size,), generator=generator)
        _, noisy = noisy_clips(model, clips[rows], levels, sigma, generator)
        classes = None if labels is None else labels[rows].to(model.device)
        return (noisy,), flow_correction(model, noisy, sigma, classes)

    return denoiser, denoiser.fit(draw_batch, steps, lr, progress, "flow-score matching")


def noisy_clips(model, clips: Tensor, levels: int, sigma: float, generator: torch.Generator
                ) -> tuple[Tensor, Tensor]:
    """(clean, clean + sigma eps) of uint8 ``clips`` in the flow's space, as in training: the bin centres of pixel
    frames, or the scaled latents of latent frames."""
    from ..data import dequantize

    clean = dequantize(clips, levels, "gaussian", 0.0).to(model.device, model.dtype)
    if model.modality.latent:
        clean = model.modality.encode(clean)
    return clean, clean + sigma * torch.randn(clean.shape, generator=generator).to(clean)


def denoising_errors(model, clips: Tensor, levels: int, sigma: float, y: Tensor | None = None,
                     denoiser: CausalScoreDenoiser | None = None, batch_size: int = 8, seed: int = 0
                     ) -> dict[str, float]:
    """Mean squared error to the clean clips (the flow's units, per dimension) of ``clips`` with the flow's training
    noise: "noisy" as they are, "tweedie" after the flow's one step y + sigma^2 grad log p(y), "score_denoiser"
    after ``denoiser`` (when given). The noise of the batch at clip i is seeded by seed * 1_000_003 + i."""
    totals = {"noisy": 0.0, "tweedie": 0.0, **({"score_denoiser": 0.0} if denoiser is not None else {})}
    model.eval()
    for low in range(0, len(clips), batch_size):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + low)
        clean, noisy = noisy_clips(model, clips[low:low + batch_size], levels, sigma, generator)
        labels = None if y is None else y[low:low + batch_size].to(model.device)
        estimates = {"noisy": noisy, "tweedie": noisy + flow_correction(model, noisy, sigma, labels)}
        if denoiser is not None:
            estimates["score_denoiser"] = denoiser.denoise(noisy)
        for name, estimate in estimates.items():
            totals[name] += float(((estimate - clean) ** 2).sum())
    count = len(clips) * clean[0].numel()
    return {name: total / count for name, total in totals.items()}


class ScoreDenoisedSampler:
    """``sampler``'s samples (drawn without denoising), then x_hat = y + d(y) by the fitted denoiser."""

    def __init__(self, sampler, denoiser: CausalScoreDenoiser):
        self.sampler, self.denoiser, self.model = sampler, denoiser, sampler.model

    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance=None,
               denoise_std: float | None = None, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        noisy = self.sampler.sample(n, y, temperature, guidance, None, generator=generator, **kwargs)
        return self.denoiser.denoise(noisy)


def with_denoiser(sampler, denoiser: CausalScoreDenoiser | None):
    """``sampler``, or with a fitted ``denoiser`` the `ScoreDenoisedSampler` that applies it in place of the Tweedie
    step (its ``denoise_std`` is then ignored)."""
    return sampler if denoiser is None else ScoreDenoisedSampler(sampler, denoiser)
