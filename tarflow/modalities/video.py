"""Video: clips (B, F, ...) as the tokens of each frame, frame-major; a frame is pixels or autoencoder latents.

Token f Tf + i is token i of frame f under the frame modality (``frames``): the p x p x C patches (raster order) of
a pixel frame in [-1, 1], or of a latent frame (STARFlow-V: every frame encoded by the frozen autoencoder on its
own, scaled as `Latents`). Tf = (S / p)^2 tokens per frame, T = F Tf.

Pixel frames are dequantized as images (a pixel of level k of L becomes 2 (k + u) / L - 1), so bits/dim divide by
F C H W with bins 2 / L wide. Latent frames have a continuous density: their figure is latent nats per dimension.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import InputError
from .base import Modality
from .latents import Latents
from .pixels import Pixels


class Video(Modality):
    """The frame modality's patchify on every frame: (B, F, C, S, S) -> (B, F Tf, p p C), frames in order."""

    name = "video"

    def __init__(self, frame_count: int, frames: Pixels):
        self.frames = frames  # how one frame becomes tokens: `Pixels`, or `Latents` of a frozen autoencoder
        self.frame_count = frame_count
        self.image_size, self.channels, self.patch_size = frames.image_size, frames.channels, frames.patch_size
        self.tokens_per_frame = frames.num_tokens
        self.token_dim = frames.token_dim
        self.num_tokens = frame_count * frames.num_tokens
        self.num_dims = frame_count * frames.num_dims

    @property
    def latent(self) -> bool:
        """Whether frames are autoencoder latents (model space) rather than pixels."""
        return isinstance(self.frames, Latents)

    def check(self, data: Tensor, name: str = "x") -> None:
        frames, channels, size = self.frame_count, self.channels, self.image_size
        what = "clips of scaled latents" if self.latent else "clips"
        expected = f"(B, {frames}, {channels}, {size}, {size})"
        if not isinstance(data, Tensor) or data.dim() != 5:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise InputError(f"{name} must be a batch of {what} {expected} (batch, frames, channels, height, "
                             f"width), got {shape}")
        if data.shape[1] != frames:
            raise InputError(f"{name} has {data.shape[1]} frames but the model expects {frames}: expected shape "
                             f"{expected}, got {tuple(data.shape)}")
        self.check_frames(data, name)
        self.frames.check(data.flatten(0, 1), name)  # dtype and finite values

    def check_frames(self, data: Tensor, name: str) -> None:
        """An `InputError` unless the frames of the clips ``data`` (B, any F, C, S, S) have the model's channels
        and size (of its latent grid when frames are latents)."""
        what = "latent channels" if self.latent else "channels"
        if data.shape[2] != self.channels:
            raise InputError(f"{name}: {data.shape[2]} channels but the model expects {self.channels} {what}, in "
                             f"clips (batch, frames, channels, height, width); got {tuple(data.shape)}")
        size, unit = self.image_size, "latents" if self.latent else "pixels"
        if data.shape[3:] != (size, size):
            raise InputError(f"{name}: frames of {data.shape[4]}x{data.shape[3]} {unit} but the model expects "
                             f"{size}x{size}: resize or crop them")

    def to_tokens(self, data: Tensor) -> Tensor:
        tokens = self.frames.to_tokens(data.flatten(0, 1))
        return tokens.reshape(data.shape[0], self.num_tokens, self.token_dim)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        frames = self.frames.from_tokens(tokens.reshape(-1, self.tokens_per_frame, self.token_dim))
        return frames.reshape(tokens.shape[0], self.frame_count, *frames.shape[1:])

    def frame_tokens(self, frame: int) -> slice:
        """The tokens of frame ``frame`` (0-based) in the frame-major sequence."""
        return slice(frame * self.tokens_per_frame, (frame + 1) * self.tokens_per_frame)

    def found_in(self, model_dir: Path) -> None:
        self.frames.found_in(model_dir)

    def bin_width(self, levels: int) -> float:
        return self.frames.bin_width(levels)

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the frames the model's clips show: decoded frames when they are latents."""
        return self.frames.image_shape()

    # ----- latent frames: clips of images <-> clips of scaled latents, frame by frame -------------------
    def encode(self, clips: Tensor) -> Tensor:
        """Clips of images (B, F', C, H, W) in [-1, 1] -> clips of scaled latents (B, F', C', S, S), any F'."""
        return self.frames.encode(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])

    def decode(self, clips: Tensor, autoencoder=None) -> Tensor:
        """Clips of scaled latents (B, F', C', S, S) -> clips of images in [-1, 1] (not clamped), frame by frame."""
        return self.frames.decode(clips.flatten(0, 1), autoencoder).unflatten(0, clips.shape[:2])

    def to_frames(self, clips: Tensor) -> Tensor:
        """Clips in model space as clips of images: decoded when frames are latents, else as they are."""
        return self.decode(clips) if self.latent else clips

    def from_frames(self, clips: Tensor) -> Tensor:
        """Clips of images in [-1, 1] in model space: encoded when frames are latents, else as they are."""
        return self.encode(clips) if self.latent else clips
