"""The encoded-latents cache: a split's autoencoder latents, written once, read by every later training on them.

``<cache>/latents/<name>-<split>-<key>.npy`` holds the raw latents (N, C', S, S) or (N, F, C', S, S) float32,
before shift and scale. The key hashes the images, their levels and the encoder's weights, so other data or a
retrained autoencoder gets its own file. Encoding 2,000 train clips of Moving MNIST (10 frames of
64x64) took 1.7 minutes on 2 CPU threads (2026-12-04); reading them back takes a second. Delete the folder to force
a new encode.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.download import default_cache_dir
from ..io import OutputError, atomic_write_bytes

VERSION = 1  # bump when encoding changes meaning (how images are dequantized before the encoder)


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The raw bytes of a tensor, whatever its dtype (bfloat16 has no numpy type)."""
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def latent_key(autoencoder, images: Tensor, levels: int) -> str:
    """sha1 (12 hex digits) of the format version, the images (shape, levels, bytes) and every tensor the
    autoencoder's ``encode`` depends on (`Autoencoder.encoder_state`)."""
    digest = hashlib.sha1(f"v{VERSION}|{tuple(images.shape)}|{images.dtype}|{levels}".encode())
    digest.update(tensor_bytes(images))
    for name, tensor in sorted(autoencoder.encoder_state().items()):
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:12]


def latent_path(name: str, split: str, key: str, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "latents" / f"{name}-{split}-{key}.npy"


def load_latents(path: Path, leading: tuple[int, ...]) -> Tensor | None:
    """The cached latents, (*leading, C', S, S) with ``leading`` (N,) or (N, F); None when absent, damaged or of
    another shape."""
    try:
        latents = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    if latents.dtype != np.float32 or latents.ndim != len(leading) + 3 or latents.shape[:len(leading)] != leading:
        return None
    if not np.isfinite(latents).all():
        return None
    return torch.from_numpy(latents)


def save_latents(path: Path, latents: Tensor) -> None:
    """Write the file atomically (whole or absent); a cache that cannot be written only warns."""
    buffer = io.BytesIO()
    np.save(buffer, latents.numpy().astype(np.float32, copy=False))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, OutputError) as e:
        warnings.warn(f"could not write the latents cache {path} ({e}); the data will be encoded again next "
                      f"time. Set $TARFLOW_CACHE to a writable folder.", stacklevel=3)
