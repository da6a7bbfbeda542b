"""The block stacks of video models (STARFlow-V): shallow blocks within each frame, a deep block over frames.

Tokens are frame-major (F frames of Tf tokens, see `tarflow.modalities.video`). Every block keeps frames in
order, so the whole flow is causal over frames: z of frames 1..f depends on x of frames 1..f only, and
log p(x) = sum_f log p(x_f | x_<f). Three layouts (``FlowConfig.frame_layout``):

- global-local: blocks 0..N-2 are `FrameLocalBlock`s, an AR flow block over the Tf tokens of each frame on its
  own (frames folded into the batch: they do not interact); block N-1, nearest the prior, is an AR flow block
  over all F Tf tokens (frame f sees frames < f and the earlier tokens of frame f).
- global-first: the same blocks with the one over all tokens first (block 0, nearest the data): it reads the
  earlier frames as they are, not as the local blocks have transformed them, and the local blocks then model
  what it leaves of each frame.
- causal: every block over all F Tf tokens.

Token orders keep frames in place: identity, or a flip of the tokens within each frame (``order=alternate``
flips the odd blocks), so no block lets a frame see a later one.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .block import ARFlowBlock
from .conditioning import Condition
from .orders import Flip, Identity, Order, Permutation


def frame_flip(frames: int, tokens_per_frame: int) -> Permutation:
    """The order that reverses the tokens within each frame and keeps frames in order."""
    within = torch.arange(tokens_per_frame).flip(0)
    return Permutation(torch.cat([frame * tokens_per_frame + within for frame in range(frames)]))


def fold_condition(condition: Condition, frames: int) -> Condition:
    """Each row of ``condition`` repeated for each of its ``frames`` (row r -> rows r F .. r F + F - 1)."""
    if condition.context is not None:
        raise ConfigError("per-token context (NTM) does not apply to video models")
    fields = {name: None if value is None else value.repeat_interleave(frames, dim=0)
              for name, value in (("labels", condition.labels), ("attn_temp", condition.attn_temp),
                                  ("noise_level", condition.noise_level))}
    return dataclasses.replace(condition, **fields)


class FrameLocalBlock(nn.Module):
    """An `ARFlowBlock` over the Tf tokens of each frame on its own: (B, F Tf, D) is folded to (B F, Tf, D), so a
    frame's tokens are autoregressive in the block's order and frames do not interact. log|det| sums over frames.

    ``block`` is the inner block (samplers invert the folded sequences with it: `fold`, `fold_condition`,
    `unfold`); ``layers`` and ``transform`` are its own."""

    def __init__(self, block: ARFlowBlock, frames: int):
        super().__init__()
        self.block, self.frames = block, frames

    @property
    def layers(self) -> nn.ModuleList:
        return self.block.layers

    @property
    def transform(self):
        return self.block.transform

    @property
    def first(self) -> int:
        return self.block.first

    def fold(self, tokens: Tensor) -> Tensor:
        """(B, F Tf, D) -> (B F, Tf, D)."""
        return tokens.reshape(tokens.shape[0] * self.frames, -1, tokens.shape[-1])

    def unfold(self, tokens: Tensor) -> Tensor:
        """(B F, Tf, D) -> (B, F Tf, D)."""
        return tokens.reshape(tokens.shape[0] // self.frames, -1, tokens.shape[-1])

    def fold_condition(self, condition: Condition) -> Condition:
        return fold_condition(condition, self.frames)

    def forward(self, x: Tensor, condition: Condition) -> tuple[Tensor, Tensor]:
        """x (B, F Tf, D) -> z (B, F Tf, D), log|det dz/dx| (B,) in nats."""
        z, logdet = self.block(self.fold(x), self.fold_condition(condition))
        return self.unfold(z), logdet.view(x.shape[0], self.frames).sum(1)

    @torch.no_grad()
    def inverse(self, z: Tensor, condition: Condition, guidance=None) -> Tensor:
        """Every frame inverted token by token, all frames at once."""
        return self.unfold(self.block.inverse(self.fold(z), self.fold_condition(condition), guidance))


def video_orders(kind: str, count: int, frames: int, tokens_per_frame: int, local: bool) -> list[Order]:
    """``count`` orders: identity, or the flip of each frame's tokens on odd blocks with ``kind="alternate"``;
    ``local`` blocks see one frame at a time, so their flip is a plain `Flip`."""
    flip = Flip() if local else frame_flip(frames, tokens_per_frame)
    return [flip if kind == "alternate" and index % 2 else Identity() for index in range(count)]


def video_blocks(config, transform, tokens_per_frame: int, captioned: bool = False) -> list[nn.Module]:
    """The block stack of a video model (see the module docstring); the class, if any, enters the top block (the
    last over the whole clip: the deep block), and every block unless ``condition_top_only``; ``captioned``: the
    caption is a text prefix of the top block instead (text-to-video), which then reads it from every frame's
    tokens."""
    frames, last = config.frame_count, config.num_blocks - 1
    spanning = {"global-local": {last}, "global-first": {0}}.get(config.frame_layout, set(range(config.num_blocks)))
    top = max(spanning)
    local_orders = video_orders(config.order, config.num_blocks, frames, tokens_per_frame, local=True)
    global_orders = video_orders(config.order, config.num_blocks, frames, tokens_per_frame, local=False)
    blocks = []
    for index, layers in enumerate(config.block_layers):
        conditioned = bool(config.num_classes) and not captioned and (index == top or not config.condition_top_only)
        if index not in spanning:
            inner = ARFlowBlock(config, layers, local_orders[index], transform, conditioned, num_tokens=tokens_per_frame)
            blocks.append(FrameLocalBlock(inner, frames))
        else:
            blocks.append(ARFlowBlock(config, layers, global_orders[index], transform, conditioned,
                                      captioned=captioned and index == top, frames=frames))
    return blocks
