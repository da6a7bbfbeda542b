"""The self-distilled denoiser of a Normalizing Trajectory Model: a small Transformer d(x_0, x_1) that learns the
model's own Tweedie correction of its final sample, so that sampling needs one forward of it instead of a backward
pass through the last step's flow.

The target is the NTM's exact last-step score: x_0 ~ p_1(x_0 | x_1, y) is a (dequantized) image, and Tweedie's
estimate of the clean image under noise of std sigma is

    x_hat_0 = x_0 + sigma^2 grad_{x_0} log p_1(x_0 | x_1, y),      loss = mean over dims of (d(x_0, x_1) - sigma^2 grad)^2

with sigma the std of the uniform dequantization noise, bin / sqrt(12), bin = 2 / levels (or a given sigma).
Self-distillation: the pairs (x_0, x_1) are the frozen model's own sampled trajectories and the target is its own
score, so no data are needed. Saved in the model directory as ``denoiser/{config.json, model.safetensors}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..modalities import Pixels
from .denoise import tweedie_correction
from .guidance import Guidance
from .small_denoiser import SmallDenoiser, check_config

DENOISER = "denoiser"  # its directory in the model directory
FORMAT = "tarflow-trajectory-denoiser"


@dataclass
class DenoiserConfig:
    """The image geometry of the model it denoises, sigma (model space units, [-1, 1] images), its size, and the
    classes of a class-conditional model (0: it reads no class)."""

    image_size: int
    channels: int
    patch_size: int
    sigma: float
    width: int = 64
    layers: int = 2
    heads: int = 2
    num_classes: int = 0
    guidance: float = 0.0  # the sampling the trajectories it was distilled on were drawn with
    guidance_rule: str = "tarflow"
    temperature: float = 1.0

    def __post_init__(self):
        check_config(self)


def dequantization_std(levels: int) -> float:
    """The std of uniform dequantization noise over one bin of width 2 / levels: bin / sqrt(12)."""
    return 2.0 / levels / math.sqrt(12.0)


class TrajectoryDenoiser(SmallDenoiser):
    """d(x_0, x_1, y): the final sample and the last step's input (B, C, H, W), and the class (B,) of a
    class-conditional model -> the correction of x_0 (same shape). A bidirectional Transformer on the tokens of x_0
    and x_1 side by side, a class embedding added to every token (row num_classes: no class, for y None or the null
    label); it starts as no correction."""

    FORMAT, CONFIG, NOUN = FORMAT, DenoiserConfig, "trajectory denoiser"
    HOW = "distill one with `tarflow distill-denoiser RUN`"

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        self.modality = Pixels(config.image_size, config.channels, config.patch_size)
        tokens, token_dim = self.modality.num_tokens, self.modality.token_dim
        self.build(tokens, 2 * token_dim, token_dim, config.width, config.layers, config.heads)
        self.class_embed = nn.Embedding(config.num_classes + 1, config.width) if config.num_classes else None
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    def forward(self, final: Tensor, last_input: Tensor, y: Tensor | None = None) -> Tensor:
        tokens = torch.cat([self.modality.to_tokens(final), self.modality.to_tokens(last_input)], dim=-1)
        bias = None
        if self.class_embed is not None:
            no_class = self.config.num_classes
            labels = torch.full((len(final),), no_class, device=final.device) if y is None else y.to(final.device)
            bias = self.class_embed(labels.clamp(0, no_class))[:, None]
        return self.modality.from_tokens(self.correction(tokens, bias=bias))

    @torch.no_grad()
    def denoise(self, final: Tensor, last_input: Tensor, y: Tensor | None = None) -> Tensor:
        """x_hat_0 = x_0 + d(x_0, x_1, y)."""
        return final + self(final, last_input, y)


def load_denoiser(model, model_dir: str | Path) -> TrajectoryDenoiser | None:
    """The model directory's distilled denoiser on the model's device and dtype, or None when it has none."""
    path = Path(model_dir) / DENOISER
    if not path.exists():
        return None
    denoiser = TrajectoryDenoiser.from_pretrained(path)
    c, d = model.config, denoiser.config
    if (d.image_size, d.channels, d.patch_size) != (c.image_size, c.channels, c.patch_size):
        raise CheckpointError(f"{path} was distilled for {d.channels}x{d.image_size}x{d.image_size} images, patch "
                              f"{d.patch_size}, not this model's: distill it again with `tarflow distill-denoiser`")
    if d.num_classes not in (0, c.num_classes):
        raise CheckpointError(f"{path} was distilled for {d.num_classes} classes, not this model's {c.num_classes}: "
                              f"distill it again with `tarflow distill-denoiser`")
    return denoiser.to(model.device, model.dtype)


def score_correction(model, final: Tensor, last_input: Tensor, y: Tensor | None, sigma: float) -> Tensor:
    """The teacher: sigma^2 grad_{x_0} log p_1(x_0 | x_1, y), the model's exact last-step score."""
    return tweedie_correction(lambda image: model.step_log_prob(image, last_input, 1, y), final, sigma)


def distill_denoiser(model, steps: int = 500, batch_size: int = 16, lr: float = 1e-3, width: int = 64,
                     layers: int = 2, sigma: float | None = None, seed: int = 0, guidance: Guidance | None = None,
                     temperature: float = 1.0, progress: bool = False) -> tuple[TrajectoryDenoiser, list[float]]:
    """A `TrajectoryDenoiser` fitted to the frozen ``model``'s Tweedie corrections on its own trajectories, drawn
    with ``guidance`` and ``temperature`` (those it will denoise: the model's sampling settings), classes at random
    (a class-conditional model's denoiser reads the class); ``sigma`` default: the dequantization std of the
    model's levels. Returns it and the loss of every step."""
    from .trajectory import TrajectorySampler

    if model.config.architecture != "ntm":
        raise ConfigError("distill-denoiser needs a Normalizing Trajectory Model (architecture=ntm)")
    c = model.config
    if guidance is not None and guidance.weight and not c.num_classes:
        raise ConfigError("guidance needs a class-conditional model: this one is unconditional, distill without it")
    sigma = sigma if sigma is not None else dequantization_std(int(model.metadata.get("levels", 256)))
    weight, rule = (guidance.weight, guidance.rule) if guidance is not None else (0.0, "tarflow")
    denoiser = TrajectoryDenoiser(DenoiserConfig(c.image_size, c.channels, c.patch_size, sigma, width, layers,
                                                 num_classes=c.num_classes, guidance=weight, guidance_rule=rule,
                                                 temperature=temperature))
    denoiser = denoiser.to(model.device, model.dtype)
    generator = torch.Generator().manual_seed(seed)
    sampler = TrajectorySampler(model)  # the model stays frozen: only the denoiser's parameters are stepped
    model.eval()

    def draw_batch():
        y = torch.randint(0, c.num_classes, (batch_size,), generator=generator) if c.num_classes else None
        trajectory = sampler.trajectory(batch_size, y, temperature, guidance, generator=generator)
        final, last_input = trajectory[:, 0], trajectory[:, 1]
        return (final, last_input, y), score_correction(model, final, last_input, y, sigma)

    return denoiser, denoiser.fit(draw_batch, steps, lr, progress, "distilling denoiser")
