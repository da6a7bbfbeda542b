"""Video sampling (STARFlow-V): frames generated in order, and clips continued from their first frames.

Every block of a video model keeps frames in order (`tarflow.flows.video`), so its inverse can be solved one
frame after the other: `VideoJacobiSampler` solves a block over the whole sequence with one GS-Jacobi module per
frame (earlier frames sit in the KV cache, the tokens of the frame are refined in parallel), and a block within
frames by Jacobi over each frame's tokens, every frame at once.

Continuation: z of frames 1..k depends on x of frames 1..k only, and the prior is independent across tokens, so
drawing z of frames k+1..F from the prior and inverting samples p(x_{k+1..F} | x_{1..k}) exactly, and gives the
first k frames back (up to rounding). `encode_frames` computes those z, with the guided map when sampling is
guided (the guided inverse then reproduces the given frames too).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..flows.conditioning import Condition
from ..flows.video import FrameLocalBlock
from .flow_score import with_denoiser
from .guidance import Guidance
from .jacobi import BlockStrategy, JacobiSampler, solve_block
from .sequential import SequentialSampler


def check_video(model) -> None:
    if model.config.modality != "video":
        raise ConfigError(f"video sampling needs a video model (modality=video), got modality={model.config.modality!r}")


def frame_temperatures(model, temperature: float, first_frame: float | None = None) -> float | Tensor:
    """The prior temperature of each token (T, 1): the first frame's at ``first_frame``, the others at
    ``temperature``; ``temperature`` itself when ``first_frame`` is None. A cool first frame draws clean digits,
    and warmer later frames keep them (at 0.5 throughout, a pixel model's frames fade to empty: docs/video.md)."""
    if first_frame is None:
        return temperature
    check_video(model)
    per_token = torch.full((model.modality.num_tokens, 1), float(temperature))
    per_token[model.modality.frame_tokens(0)] = first_frame
    return per_token


def frame_bounds(frames: int, tokens_per_frame: int, first: int) -> list[tuple[int, int]]:
    """One module [start, end) per frame, in block order; tokens before ``first`` are known (a zero start)."""
    bounds = [(max(frame * tokens_per_frame, first), (frame + 1) * tokens_per_frame) for frame in range(frames)]
    return [(start, end) for start, end in bounds if end > start]


class VideoJacobiSampler(JacobiSampler):
    """`SequentialSampler`'s ``sample``, with frames in order and the tokens of each frame solved by Jacobi.

    ``max_iters``: the cap of Jacobi iterations per frame (None: the frame's token count, so exact whatever
    ``tol``); ``tol`` the relative-change tolerance of `tarflow.sampling.jacobi`."""

    name = "video-jacobi"

    def __init__(self, model, tol: float = 1e-5, max_iters: int | None = None):
        check_video(model)
        super().__init__(model, BlockStrategy(1, max_iters), tol)

    def invert(self, tokens: Tensor, condition: Condition, guidance: Guidance | None = None) -> Tensor:
        modality = self.model.modality
        blocks = self.model.blocks
        for index in reversed(range(len(blocks))):
            block = blocks[index]
            bounds = None
            if not isinstance(block, FrameLocalBlock):
                bounds = frame_bounds(modality.frame_count, modality.tokens_per_frame, block.first)
            tokens, self.last_iterations[index] = solve_block(block, tokens, condition, guidance, self.strategies[index],
                                                              self.tol, bounds=bounds)
        return tokens

    def describe(self) -> str:
        cap = self.strategies[0].max_iters
        return f"{self.name} (tol {self.tol:g}; frames in order, Jacobi within each, cap {cap or 'exact'})"


def guided_block_forward(block, tokens: Tensor, condition: Condition, guidance: Guidance | None) -> Tensor:
    """z of one block from its x (B, T, D): the block's forward, or with ``guidance`` the map whose inverse the
    guided samplers compute (each token's params combined from both branches of ``condition``)."""
    if guidance is None:
        return block(tokens, condition)[0]
    if isinstance(block, FrameLocalBlock):
        inner = guided_block_forward(block.block, block.fold(tokens), block.fold_condition(condition), guidance)
        return block.unfold(inner)
    x = block.order.apply(tokens)
    first, num_tokens = block.first, x.shape[1]
    params = block.params(block.inputs(x, first, num_tokens), condition)
    positions = torch.arange(first, num_tokens, dtype=torch.float64).view(-1, 1)
    params = block.transform.guide(params, guidance, positions.to(params[0].dtype), num_tokens)
    z, _ = block.transform.forward(x[:, first:], params)
    return block.order.undo(torch.cat([x[:, :first], z], dim=1))


@torch.no_grad()
def encode_frames(sampler: SequentialSampler, clips: Tensor, condition: Condition,
                  guidance: Guidance | None = None) -> Tensor:
    """The noise tokens (B, T, D) of ``clips`` under the map ``sampler`` inverts (see `guided_block_forward`)."""
    tokens = sampler.model.modality.to_tokens(clips)
    for block in sampler.model.blocks:
        tokens = guided_block_forward(block, tokens, condition, guidance)
    return tokens


def check_first_frames(model, first_frames: Tensor, n: int) -> int:
    """The number k of given frames, after an `InputError` for a batch that does not fit the model."""
    modality = model.modality
    frames, channels, size = modality.frame_count, modality.channels, modality.image_size
    expected = f"({n}, k, {channels}, {size}, {size}) with 1 <= k < {frames}"
    if not isinstance(first_frames, Tensor) or first_frames.dim() != 5 or first_frames.shape[0] != n:
        shape = tuple(first_frames.shape) if isinstance(first_frames, Tensor) else type(first_frames).__name__
        raise InputError(f"first frames must be clips {expected}, got {shape}")
    count = first_frames.shape[1]
    if not 1 <= count < frames:
        raise InputError(f"got {count} first frames but the model makes clips of {frames}: give between 1 and "
                         f"{frames - 1} frames to continue from")
    modality.check_frames(first_frames, "the first frames")
    return count


@torch.no_grad()
def continue_clips(sampler: SequentialSampler, first_frames: Tensor, y: Tensor | None = None,
                   temperature: float = 1.0, guidance: Guidance | None = None,
                   generator: torch.Generator | None = None, noise_std: float | None = None,
                   denoiser=None) -> Tensor:
    """Clips (n, F, C, H, W) in model space that start with ``first_frames`` (n, k, C, H, W, in [-1, 1]) and
    continue them: z of the given frames by `encode_frames`, z of the rest from the prior scaled by
    ``temperature``, then ``sampler`` inverts (any sampler: sequential, `VideoJacobiSampler`, ...).

    ``noise_std``: for a model trained with gaussian noise, which models noisy frames: the given frames get that
    noise before they are encoded, and the clip is denoised after, by ``denoiser`` (a fitted
    `CausalScoreDenoiser`, causal over frames) or else one Tweedie step."""
    model = sampler.model
    check_video(model)
    n = first_frames.shape[0] if isinstance(first_frames, Tensor) and first_frames.dim() else 0
    count = check_first_frames(model, first_frames, n)
    y = model.conditioning.check(y, n, model.device)
    first_frames = first_frames.to(model.device, model.dtype)
    if denoiser is not None and not noise_std:
        raise ConfigError("a score denoiser removes the training noise: give the model's noise_std with it")
    if noise_std:
        drawn = torch.randn(first_frames.shape, generator=generator, dtype=first_frames.dtype)  # on the CPU
        first_frames = first_frames + noise_std * drawn.to(first_frames.device)
    noise = sampler.noise(n, temperature, generator)
    padded = torch.cat([first_frames, noise[:, count:]], dim=1)  # later frames do not reach the given frames' z
    model.modality.check(padded, "first frames")
    was_training = model.training
    model.eval()
    try:
        condition = sampler.condition(y, n, guidance)
        known = model.modality.from_tokens(encode_frames(sampler, padded, condition, guidance))
    finally:
        model.train(was_training)
    z = torch.cat([known[:, :count], noise[:, count:]], dim=1)
    return with_denoiser(sampler, denoiser).sample(n, y, guidance=guidance, denoise_std=noise_std, z=z)
