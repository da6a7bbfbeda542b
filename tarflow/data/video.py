"""Video datasets as compact integer tensors: clips (N, F, C, H, W) of levels 0..255 and a class per clip.

Named datasets: ``moving-mnist`` (two MNIST digits bouncing in 64x64, 20 frames, generated deterministically
from a seed and the MNIST split's digits: `moving_mnist`) and ``video-folder`` (a folder of video files, or of
frame folders, a class per sub-folder; each clip cut to its central square, resized to ``image_size``, and
its first ``frame_count`` frames kept, every ``frame_stride``-th). Both go through the decoded cache of the
image datasets (`datasets.cached`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, InputError
from ..progress import progress_bar
from ..video_io import VIDEO_SUFFIXES, read_frames
from . import moving_mnist
from .datasets import SOURCES, Decoded, Options, assemble, cached, load_dataset, report_bad
from .download import default_cache_dir
from .images import BadImage, center_square, decode, layout, to_mode

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MOVING_MNIST_DEFAULTS = {"clip_count": 10_000, "frame_count": 20, "image_size": 64, "digit_count": 2, "seed": 0}


@dataclass
class VideoData:
    """One split of a video dataset; pixel levels, not floats (dequantize per batch, as for images)."""

    name: str
    split: str
    clips: Tensor  # (N, F, C, H, W) uint8 levels 0..levels-1 (memory-mapped when cached)
    labels: Tensor  # (N,) int64 class of each clip; all 0 when num_classes == 0 (unconditional data)
    levels: int  # L: levels per channel; bin width 2/L in [-1, 1]
    num_classes: int
    classes: tuple[str, ...] = ()  # class names, index = label
    object_labels: Tensor | None = None  # (N, K) int64: Moving MNIST's digit classes, in paste order

    def __len__(self) -> int:
        return self.clips.shape[0]

    @property
    def frame_count(self) -> int:
        return self.clips.shape[1]

    @property
    def channels(self) -> int:
        return self.clips.shape[2]

    @property
    def image_size(self) -> int:
        return self.clips.shape[-1]


def check_clips(clips: Tensor, frame_count: int, channels: int, image_size: int) -> None:
    """InputError unless ``clips`` is (N, frame_count, channels, image_size, image_size), naming what differs."""
    expected = (frame_count, channels, image_size, image_size)
    if clips.ndim != 5:
        raise InputError(f"clips must be (N, frames, channels, height, width) = (N, {', '.join(map(str, expected))}),"
                         f" got shape {tuple(clips.shape)}; for one clip pass clip[None]")
    shape = tuple(clips.shape[1:])
    if shape[0] != frame_count:
        raise InputError(f"clips have {shape[0]} frames, expected {frame_count}: load the data with "
                         f"frame_count={frame_count} (or use a model built for {shape[0]} frames)")
    if shape[1] != channels:
        raise InputError(f"clips have {shape[1]} channels, expected {channels}: load the data with "
                         f"channels={channels} (1 grey, 3 RGB)")
    if shape[2:] != (image_size, image_size):
        raise InputError(f"clip frames are {shape[3]}x{shape[2]} pixels, expected {image_size}x{image_size}: load "
                         f"the data with image_size={image_size}")


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


Listing = list[tuple[str, tuple[tuple[str, int, int], ...]]]  # (clip path, its files (path, bytes, mtime ns))


def scan_clips(root: Path) -> Listing:
    """Every clip under ``root``, sorted: a video file, or a folder of frame images (in natural order).

    A folder holding frame images is one clip; it may not also hold videos or sub-folders. Hidden entries
    and other files are ignored."""
    clips: Listing = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        frames = [e for e in entries if e.is_file() and e.name.lower().endswith(FRAME_SUFFIXES)]
        if frames:
            others = [e.name for e in entries if e.is_dir() or e.name.lower().endswith(VIDEO_SUFFIXES)]
            if others or not prefix:
                beside = f"beside {others[0]!r}" if others else "directly in the root"
                raise DataError(f"{folder} holds frame images ({frames[0].name}, ...) {beside}: each clip's frames "
                                f"go in a folder of their own, which holds nothing else")
            frames.sort(key=lambda e: natural_key(e.name))
            files = tuple((prefix + e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in frames)
            clips.append((prefix.rstrip("/"), files))
            return
        for e in entries:
            if e.is_dir():
                walk(Path(e.path), prefix + e.name + "/")
            elif e.name.lower().endswith(VIDEO_SUFFIXES):
                st = e.stat()
                clips.append((prefix + e.name, ((prefix + e.name, st.st_size, st.st_mtime_ns),)))

    walk(root, "")
    return sorted(clips)


def decode_clip(root: Path, clip: str, files: tuple[tuple[str, int, int], ...], size: int, channels: int,
                frame_count: int, frame_stride: int) -> np.ndarray | str:
    """One clip as (F, C, size, size) uint8: frames 0, s, 2s, ... (s = frame_stride), each cut to its central
    square and resized; or the reason it cannot be used (a string)."""
    needed = (frame_count - 1) * frame_stride + 1
    wanted = f"{needed} needed for frame_count={frame_count} at frame_stride={frame_stride}"
    is_video = len(files) == 1 and files[0][0] == clip
    if not is_video and len(files) < needed:
        return f"{len(files)} frames, {wanted}"
    try:
        if is_video:
            frames = read_frames(root / clip, needed)
            if len(frames) < needed:
                return f"{len(frames)} frames, {wanted}"
            arrays = [np.asarray(center_square(to_mode(frame, channels), size)) for frame in frames[::frame_stride]]
            arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]
        else:
            arrays = [decode(str(root / name), size, channels) for name, _, _ in files[:needed:frame_stride]]
    except ConfigError:
        raise  # a missing optional package: one error, not one per clip
    except BadImage as e:
        return str(e)
    except Exception as e:  # Pillow, imageio and ffmpeg raise OSError, ValueError, RuntimeError, ...
        first_line = (str(e).strip().splitlines() or [""])[0][:200]  # ffmpeg's messages run to pages
        return f"cannot decode ({type(e).__name__}{': ' + first_line if first_line else ''})"
    return np.stack(arrays)


class BadClipWarning(UserWarning):
    """Clips left out of a video dataset because they cannot be decoded or are too short (on_bad_clip="skip")."""


def load_video_folder(split: str, root: Path, image_size: int, frame_count: int, channels: int, frame_stride: int,
                      on_bad_clip: str, cache_dir: Path, progress: bool) -> VideoData:
    """A split of a folder of clips; the layout (class sub-folders, train/ and test/, else 1 in 10 clips held out
    for test by a hash of its path) is that of the image folder dataset (`images.layout`)."""
    if not root.is_dir():
        raise DataError(f"video-folder: {root} is not a folder; data_dir must be a folder of video files "
                        f"({' '.join(VIDEO_SUFFIXES)}) or of frame folders, a class per sub-folder")
    listing = scan_clips(root)
    if not listing:
        raise DataError(f"video-folder: no clips in {root}: looked for video files ({' '.join(VIDEO_SUFFIXES)}) and "
                        f"folders of frame images ({' '.join(FRAME_SUFFIXES)})")
    text = "\n".join(f"{clip}|" + ",".join(f"{p}:{n}:{t}" for p, n, t in files) for clip, files in listing)
    source = f"video-folder|{root.resolve()}|stride {frame_stride}|" + hashlib.sha1(text.encode()).hexdigest()
    shape = (frame_count, channels, image_size, image_size)

    def decode_split() -> Decoded:
        splits, labels, classes = layout([clip for clip, _ in listing], str(root))
        chosen = [i for i, s in enumerate(splits) if s == split]
        bar = progress_bar(total=len(chosen), desc=f"decoding video-folder {split}", unit="clip", enabled=progress,
                           leave=False)
        results = []
        for i in chosen:
            clip, files = listing[i]
            results.append(decode_clip(root, clip, files, image_size, channels, frame_count, frame_stride))
            bar.update(1)
        bar.close()
        shown = [str(root / listing[i][0]) for i in chosen]
        return {split: assemble(results, [labels[i] for i in chosen], shown, classes, shape)}

    x, y, meta, path = cached("video-folder", split, shape, source, decode_split, Options(cache_dir=cache_dir))
    report_bad("video-folder", root, split, meta, on_bad_clip, path, "clips", "on_bad_clip",
               "lower frame_count or frame_stride if they are too short, ", BadClipWarning)
    if not len(x):
        raise DataError(f"video-folder: the {split} split of {root} holds no usable clips ({meta['total']} found, "
                        f"{len(meta['skipped'])} unusable). Without train/ and test/ folders 1 in 10 clips is held "
                        f"out for test, so a folder needs at least a few dozen clips.")
    classes = tuple(meta["classes"])
    return VideoData("video-folder", split, torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64)),
                     levels=256, num_classes=len(classes), classes=classes)


def load_moving_mnist(split: str, clip_count: int, frame_count: int, image_size: int, digit_count: int, seed: int,
                      data_dir: Path | None, cache_dir: Path, download: bool, progress: bool) -> VideoData:
    """Moving MNIST clips (N, F, 1, S, S) from the MNIST split of the same name, generated once and cached; a clip's
    label is the set of digits it shows (`moving_mnist.digit_sets`: 55 classes for two digits)."""
    files = SOURCES["mnist"][:2] if split == "train" else SOURCES["mnist"][2:]
    source = (f"moving-mnist|seed {seed}|clips {clip_count}|digits {digit_count}|mnist "
              + "+".join(f.md5 for f in files))
    protocol = {"seed": seed, "clip_count": clip_count, "frame_count": frame_count, "image_size": image_size,
                "digit_count": digit_count, "digit_size": moving_mnist.DIGIT_SIZE, "step": moving_mnist.STEP}

    def generate() -> Decoded:
        mnist = load_dataset("mnist", split, data_dir, cache_dir, download, progress=progress)
        clips, digit_labels = moving_mnist.generate(mnist.images[:, 0].numpy(), mnist.labels.numpy(), split,
                                                    clip_count, frame_count, image_size, digit_count, seed)
        return {split: (clips, digit_labels, {"protocol": protocol})}

    shape = (frame_count, 1, image_size, image_size)
    x, y, _, _ = cached("moving-mnist", split, shape, source, generate, Options(cache_dir=cache_dir))
    digits = np.asarray(y, dtype=np.int64)
    classes = moving_mnist.digit_set_names(digit_count)
    return VideoData("moving-mnist", split, torch.from_numpy(x), torch.from_numpy(moving_mnist.digit_set_labels(digits)),
                     levels=256, num_classes=len(classes), classes=classes, object_labels=torch.from_numpy(digits))


VIDEO_DATASETS = ("moving-mnist", "video-folder")


def positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def load_video_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None, download: bool = True,
                       image_size: int | None = None, frame_count: int | None = None, channels: int | None = None,
                       frame_stride: int | None = None, clip_count: int | None = None, digit_count: int | None = None,
                       seed: int | None = None, on_bad_clip: str = "error", progress: bool = True) -> VideoData:
    """A named video dataset's ``split`` ("train" or "test") as uint8 clips (N, F, C, H, W) and int64 labels.

    moving-mnist: data_dir is a local copy of the four MNIST IDX files (else downloaded into the cache);
    clip_count (default 10,000 per split), frame_count (20), image_size (64, at least 29), digit_count (2) and
    seed (0) set the generator; channels must be 1 or unset.
    video-folder: data_dir is the folder, image_size and frame_count are required, channels 3 (RGB, default)
    or 1 (grey), frame_stride (default 1) keeps every k-th frame; on_bad_clip "error" (stop, naming every
    undecodable or too-short clip) or "skip" (leave them out, with one warning that counts them).
    cache_dir: as for images (default ``$TARFLOW_CACHE``, else ``~/.cache/tarflow``).
    """
    if name not in VIDEO_DATASETS:
        raise ConfigError(f"unknown video dataset {name!r}; available: {', '.join(VIDEO_DATASETS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if on_bad_clip not in ("error", "skip"):
        raise ConfigError(f"on_bad_clip must be 'error' or 'skip', got {on_bad_clip!r}")
    cache_dir = Path(cache_dir or default_cache_dir())
    if name == "moving-mnist":
        if channels not in (None, 1):
            raise ConfigError(f"moving-mnist clips are grey (1 channel), not {channels}: leave channels unset")
        if frame_stride is not None:
            raise ConfigError("frame_stride applies to video-folder only; moving-mnist makes frame_count frames")
        options = {"clip_count": clip_count, "frame_count": frame_count, "image_size": image_size,
                   "digit_count": digit_count, "seed": seed}
        options = {k: MOVING_MNIST_DEFAULTS[k] if v is None else v for k, v in options.items()}
        for key in ("clip_count", "frame_count", "digit_count"):
            positive(key, options[key])
        positive("image_size", options["image_size"], moving_mnist.DIGIT_SIZE + 1)
        positive("seed", options["seed"], 0)
        return load_moving_mnist(split, **options, data_dir=Path(data_dir) if data_dir is not None else None,
                                 cache_dir=cache_dir, download=download, progress=progress)
    generator_options = {"clip_count": clip_count, "digit_count": digit_count, "seed": seed}
    unused = [k for k, v in generator_options.items() if v is not None]
    if unused:
        raise ConfigError(f"{', '.join(unused)} apply to moving-mnist only; a video-folder holds its own clips")
    if data_dir is None:
        raise ConfigError("the video-folder dataset needs data_dir=PATH: a folder of video files or of frame "
                          "folders, a class per sub-folder")
    if image_size is None or frame_count is None:
        raise ConfigError("the video-folder dataset needs image_size=N (frames are cut to their central square and "
                          "resized to N x N) and frame_count=F (the first F frames of each clip are kept)")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 3 (RGB) or 1 (grey), got {channels}")
    return load_video_folder(split, Path(data_dir), positive("image_size", image_size),
                             positive("frame_count", frame_count), channels or 3,
                             positive("frame_stride", 1 if frame_stride is None else frame_stride), on_bad_clip,
                             cache_dir, progress)
