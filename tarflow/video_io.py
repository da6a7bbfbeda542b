"""Video files: animated GIF (Pillow), MP4 and other containers (imageio with imageio-ffmpeg), frame strips (PNG).

A clip is (F, C, H, W) uint8: F frames of C = 1 (grey) or 3 (RGB) channels, as a tensor or an array; several
clips are (N, F, C, H, W). Every write is atomic (`tarflow.io.atomic_write_bytes`).

- GIF (Pillow, no extra needed): exact for grey clips and for frames of at most 256 colours; frames with more
  colours go through Pillow's 256-colour palette quantizer. Pillow, like most GIF writers, stores a run of
  identical frames as one frame shown for their summed duration; `read_frames` expands a frame shown k times
  as long as the shortest one into k frames, so such runs come back (a clip whose frames are all identical
  is stored as a single frame and comes back as one).
- MP4 (H.264 by libx264 in yuv420p, through imageio + imageio-ffmpeg, whose wheel ships ffmpeg): lossy; grey
  clips are written as RGB. Needs an even width and height. Install with ``pip install 'tarflow[video]'``.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch import Tensor

from .data.images import to_mode
from .errors import ConfigError, InputError
from .io import atomic_write_bytes
from .viz import grid_image

INSTALL = "pip install 'tarflow[video]'"
GIF_SUFFIX = ".gif"
VIDEO_SUFFIXES = (".gif", ".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm")


def clip_array(clip: Tensor | np.ndarray, what: str = "clip") -> np.ndarray:
    """``clip`` (F, C, H, W) uint8, C in {1, 3}, as a (F, H, W, C) array; InputError naming the problem."""
    array = clip.detach().cpu().numpy() if isinstance(clip, Tensor) else np.asarray(clip)
    if array.ndim != 4:
        raise InputError(f"a {what} must be (frames, channels, height, width), got shape {tuple(array.shape)}; "
                         f"for a batch of clips (N, F, C, H, W) pass one clip at a time")
    frames, channels, height, width = array.shape
    if channels not in (1, 3):
        raise InputError(f"a {what} must have 1 (grey) or 3 (RGB) channels, got {channels} (shape "
                         f"{tuple(array.shape)}, read as frames, channels, height, width)")
    if frames < 1 or height < 1 or width < 1:
        raise InputError(f"a {what} needs at least one frame of at least 1x1 pixels, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise InputError(f"a {what} must hold uint8 levels 0..255, got {array.dtype}: convert model-space clips "
                         f"with tarflow.viz.to_uint8(x, levels)")
    return array.transpose(0, 2, 3, 1)


def frame_images(array: np.ndarray) -> list[Image.Image]:
    """(F, H, W, C) uint8 -> one PIL image per frame (mode L or RGB)."""
    if array.shape[-1] == 1:
        return [Image.fromarray(frame[..., 0], "L") for frame in array]
    return [Image.fromarray(np.ascontiguousarray(frame), "RGB") for frame in array]


def check_fps(fps: float) -> None:
    if not fps > 0:
        raise ConfigError(f"fps must be positive, got {fps}")


def save_gif(clip: Tensor | np.ndarray, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write ``clip`` (F, C, H, W) uint8 as an animated GIF that loops, each frame shown round(1000 / fps) ms
    (GIF counts in 10 ms steps: 10, 20, 25 or 50 fps are exact)."""
    check_fps(fps)
    frames = frame_images(clip_array(clip))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                   loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def imageio_v3(what: str):
    """imageio's v3 API, after checking that an ffmpeg backend (imageio-ffmpeg or PyAV) is installed."""
    try:
        import imageio.v3 as iio
    except ImportError:
        iio = None
    if iio is None or (importlib.util.find_spec("imageio_ffmpeg") is None and importlib.util.find_spec("av") is None):
        raise ConfigError(f"{what} needs imageio and imageio-ffmpeg: {INSTALL} (or pip install imageio "
                          f"imageio-ffmpeg); GIF files need neither")
    return iio


def save_mp4(clip: Tensor | np.ndarray, path: str | os.PathLike, fps: float = 10.0, quality: float = 8.0) -> Path:
    """Write ``clip`` (F, C, H, W) uint8 as an H.264 MP4 (yuv420p; lossy). quality 1..10 is imageio-ffmpeg's
    scale: libx264's constant rate factor is int(51 (1 - quality / 10)), so 10 is lossless before the
    RGB -> YUV 4:2:0 conversion and 8 (crf 10) is near-exact. Needs imageio-ffmpeg (``tarflow[video]``)."""
    check_fps(fps)
    if not 1 <= quality <= 10:
        raise ConfigError(f"MP4 quality must be between 1 and 10, got {quality}")
    array = clip_array(clip)
    height, width = array.shape[1:3]
    if height % 2 or width % 2:
        raise InputError(f"MP4 (H.264, yuv420p) needs an even width and height, got {width}x{height}: crop or pad "
                         f"the clip by a pixel, or save it as a GIF")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    iio = imageio_v3(f"writing {Path(path).name}")
    data = iio.imwrite("<bytes>", array, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264",
                       quality=quality, macro_block_size=1, ffmpeg_log_level="error")
    atomic_write_bytes(path, data)
    return Path(path)


def save_frame_strip(clips: Tensor | np.ndarray, path: str | os.PathLike, every: int = 1, scale: int | None = None,
                     pad: int = 1) -> Path:
    """One PNG of several clips (N, F, C, H, W) uint8: a row per clip, its frames 0, every, 2 every, ... left to
    right, on a white background with ``pad`` pixels between frames; upscaled (nearest) by ``scale``."""
    clips = torch.as_tensor(clips).detach().cpu()
    if clips.ndim != 5:
        raise InputError(f"a frame strip takes clips (N, F, C, H, W), got shape {tuple(clips.shape)}; for one clip "
                         f"pass clip[None]")
    if every < 1:
        raise ConfigError(f"every must be a positive frame step, got {every}")
    for clip in clips:
        clip_array(clip)
    shown = clips[:, ::every]
    count, frames = shown.shape[:2]
    buffer = io.BytesIO()
    grid_image(shown.reshape(count * frames, *shown.shape[2:]), nrow=frames, scale=scale, pad=pad).save(buffer,
                                                                                                         format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def gif_frames(path: Path) -> Iterator[Image.Image]:
    """The frames of a GIF, a frame shown k times as long as the shortest one repeated k times (see the module
    docstring)."""
    with Image.open(path) as im:
        durations = []
        frames = []
        for frame in ImageSequence.Iterator(im):
            frames.append(frame.copy())
            durations.append(int(frame.info.get("duration") or 0))
    shortest = min((d for d in durations if d > 0), default=0)
    for frame, duration in zip(frames, durations):
        repeats = max(1, round(duration / shortest)) if shortest else 1
        for _ in range(repeats):
            yield frame


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> list[Image.Image]:
    """The first ``max_frames`` (default all) frames of a video file as PIL images, in order. GIF by Pillow;
    other containers (MP4, AVI, MOV, MKV, WebM) by imageio with imageio-ffmpeg. Decoding errors propagate."""
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1 (or None for every frame), got {max_frames}")
    path = Path(path)
    if path.suffix.lower() == GIF_SUFFIX:
        source = gif_frames(path)
    else:
        source = imageio_v3(f"reading {path.name}").imiter(path)
    frames = []
    try:  # stop decoding (and let ffmpeg go) as soon as enough frames are read
        for frame in source:
            frames.append(frame if isinstance(frame, Image.Image) else Image.fromarray(frame))
            if len(frames) == max_frames:
                break
    finally:
        source.close()
    return frames


def read_clip(path: str | os.PathLike, channels: int = 3, max_frames: int | None = None) -> Tensor:
    """A video file as a clip (F, C, H, W) uint8 at its own size; grey (channels=1) by ITU-R 601-2 luma."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 3 (RGB) or 1 (grey), got {channels}")
    frames = [np.asarray(to_mode(frame, channels)) for frame in read_frames(path, max_frames)]
    if not frames:
        raise InputError(f"{path} holds no frames")
    array = np.stack(frames)
    return torch.from_numpy(array[:, None] if channels == 1 else array.transpose(0, 3, 1, 2).copy())
