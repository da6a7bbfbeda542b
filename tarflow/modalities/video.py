"""Video: clips (B, F, C, H, W) in [-1, 1] as the p x p x C patches of each frame, frame-major.

Token f Tf + i is patch i (raster order) of frame f, Tf = (H / p)^2 tokens per frame, T = F Tf. A pixel of level k
of L is dequantized to 2 (k + u) / L - 1 as for images, so bits/dim divide by F C H W with bins 2 / L wide.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import InputError
from .pixels import Pixels


class Video(Pixels):
    """Pixels' patchify on every frame: (B, F, C, H, W) -> (B, F Tf, p p C), frames in order."""

    name = "video"

    def __init__(self, frame_count: int, image_size: int, channels: int, patch_size: int):
        super().__init__(image_size, channels, patch_size)
        self.frame_count = frame_count
        self.tokens_per_frame = self.num_tokens
        self.num_tokens = frame_count * self.tokens_per_frame
        self.num_dims = frame_count * self.num_dims

    def check(self, data: Tensor, name: str = "x") -> None:
        frames, channels, size = self.frame_count, self.channels, self.image_size
        expected = f"(B, {frames}, {channels}, {size}, {size})"
        if not isinstance(data, Tensor) or data.dim() != 5:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise InputError(f"{name} must be a batch of clips {expected} (batch, frames, channels, height, width), "
                             f"got {shape}")
        if data.shape[1] != frames:
            raise InputError(f"{name} has {data.shape[1]} frames but the model expects {frames}: expected shape "
                             f"{expected}, got {tuple(data.shape)}")
        self.check_frames(data, name)
        super().check(data.flatten(0, 1), name)  # dtype and finite values

    def check_frames(self, data: Tensor, name: str) -> None:
        """An `InputError` unless the frames of the clips ``data`` (B, any F, C, H, W) have the model's channels
        and size."""
        if data.shape[2] != self.channels:
            raise InputError(f"{name}: {data.shape[2]} channels but the model expects {self.channels} (1 grey, "
                             f"3 RGB), in clips (batch, frames, channels, height, width); got {tuple(data.shape)}")
        size = self.image_size
        if data.shape[3:] != (size, size):
            raise InputError(f"{name}: frames of {data.shape[4]}x{data.shape[3]} pixels but the model expects "
                             f"{size}x{size}: resize or crop them")

    def to_tokens(self, data: Tensor) -> Tensor:
        tokens = super().to_tokens(data.flatten(0, 1))
        return tokens.reshape(data.shape[0], self.num_tokens, self.token_dim)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        frames = super().from_tokens(tokens.reshape(-1, self.tokens_per_frame, self.token_dim))
        return frames.reshape(tokens.shape[0], self.frame_count, *frames.shape[1:])

    def frame_tokens(self, frame: int) -> slice:
        """The tokens of frame ``frame`` (0-based) in the frame-major sequence."""
        return slice(frame * self.tokens_per_frame, (frame + 1) * self.tokens_per_frame)
