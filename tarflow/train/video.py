"""What the image trainer needs to train video models (STARFlow-V): clips as its data, clips as its samples.

The training loop is the image one (`train/trainer.py`): a batch of clips (B, F, C, H, W) is dequantized like a
batch of images, and bits/dim divide by F C H W. Moving MNIST is generated with ``clip_count`` clips per split
(TrainConfig; 0: the dataset's 10,000).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..data.video import VideoData, load_video_dataset
from ..video_io import save_frame_strip, save_gif


class ClipData(VideoData):
    """A video split as the image trainer reads a dataset: ``images`` are the clips (N, F, C, H, W)."""

    @property
    def images(self) -> Tensor:
        return self.clips


def dataset_options(dataset: str, clip_count: int) -> dict[str, Any]:
    """The loader options a run records (metadata) so that `tarflow eval` reloads the same clips."""
    return {"clip_count": clip_count} if dataset == "moving-mnist" and clip_count else {}


def load_clips(dataset: str, split: str, data_dir: str | None, model_config, progress: bool,
               options: dict[str, Any] | None = None, frame_count: int | None = None) -> ClipData:
    """One split of a video dataset with the model's frame size and channels (of the frames its autoencoder
    encodes, when frames are latents) and its frame count, or ``frame_count`` (longer clips to continue)."""
    from .latents import image_geometry

    image_size, channels = image_geometry(model_config)
    channels = None if dataset == "moving-mnist" else channels  # moving-mnist is grey only
    data = load_video_dataset(dataset, split, data_dir=data_dir or None, image_size=image_size,
                              frame_count=frame_count or model_config.frame_count, channels=channels, progress=progress,
                              **(options or {}))
    return ClipData(**{name: getattr(data, name) for name in VideoData.__dataclass_fields__})


def save_clips(clips: Tensor, path: Path) -> Path:
    """uint8 clips (N, F, C, H, W) as a frame strip at ``path`` (PNG, a row per clip) and the first clip as a GIF
    beside it (same name, .gif)."""
    save_gif(clips[0], Path(path).with_suffix(".gif"))
    return save_frame_strip(clips, path)
