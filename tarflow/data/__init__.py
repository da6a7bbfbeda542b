"""Datasets and the map between pixel levels and model space."""

from .quantize import bin_width, dequantize, quantize

__all__ = ["bin_width", "dequantize", "quantize"]
from .augment import flip_batch, reverse_time_batch  # noqa: E402
from .datasets import DATASETS, SOURCES, BadImageWarning, ImageData, load_dataset  # noqa: E402
from .download import default_cache_dir, md5sum  # noqa: E402
from .video import VIDEO_DATASETS, BadClipWarning, VideoData, check_clips, load_video_dataset  # noqa: E402

__all__ += ["DATASETS", "SOURCES", "BadImageWarning", "ImageData", "load_dataset", "flip_batch", "reverse_time_batch",
            "default_cache_dir", "md5sum", "VIDEO_DATASETS", "BadClipWarning", "VideoData", "check_clips",
            "load_video_dataset"]
