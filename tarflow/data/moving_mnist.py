"""Moving MNIST (Srivastava et al. 2015): MNIST digits bouncing inside a square canvas, generated from a seed.

Protocol, per clip and per digit (defaults: 2 digits of 28x28 on a 64x64 canvas, 20 frames):

- the digit is an MNIST image of the split (train clips from the MNIST training images, test clips from the
  test images), drawn uniformly with replacement;
- its position p = (y, x) starts uniform in [0, 1)^2, a fraction of the free range R = size - 28 pixels;
  its direction theta is uniform in [0, 2 pi) and its velocity v = (sin theta, cos theta);
- each frame first steps p <- p + 0.1 v, then reflects: a coordinate at or below 0 is set to 0 and at or
  above 1 to 1, and that component of v changes sign; the frame then shows the digit with its top-left
  corner at floor(R p) pixels (so frame 0 is already one step from the start, as in the original code);
- digits are combined by a pixel-wise maximum (overlaps stay within 0..255).

Classes: a clip's class is the set of digits it shows, sorted (`digit_sets`: (0, 0), (0, 1), ..., (9, 9), 55
classes for two digits, 10 for one), named "3 and 7"; its digits in paste order are its ``object_labels``.

Randomness: clips come in blocks of 1,000, block b drawing from numpy's PCG64 seeded with (seed, split, b)
(train 0, test 1): digit indices (block, D), start positions (block, D, 2), angles (block, D), in that
order. Clip i is therefore the same whatever the number of clips asked for.
"""

from __future__ import annotations

import itertools

import numpy as np

DIGIT_SIZE = 28
STEP = 0.1  # per frame, as a fraction of the free range
BLOCK = 1000  # clips drawn from one random stream
SPLIT_STREAMS = {"train": 0, "test": 1}


def block_draws(seed: int, split: str, block: int, digit_pool: int, digit_count: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block's digit indices (BLOCK, D), start positions (BLOCK, D, 2) in [0, 1) and angles (BLOCK, D)."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], block])
    indices = rng.integers(0, digit_pool, (BLOCK, digit_count))
    starts = rng.random((BLOCK, digit_count, 2))
    angles = rng.random((BLOCK, digit_count)) * 2 * np.pi
    return indices, starts, angles


def trajectories(starts: np.ndarray, angles: np.ndarray, frame_count: int, free_range: int) -> np.ndarray:
    """Top-left pixel corners (N, F, D, 2) as (row, column) int64 in 0..free_range, by the reflection rule."""
    position = starts.astype(np.float64).copy()
    velocity = np.stack([np.sin(angles), np.cos(angles)], axis=-1)
    corners = np.empty((len(starts), frame_count, *starts.shape[1:]), dtype=np.int64)
    for frame in range(frame_count):
        position = position + STEP * velocity
        hit_wall = (position <= 0) | (position >= 1)
        velocity = np.where(hit_wall, -velocity, velocity)
        position = position.clip(0, 1)
        corners[:, frame] = np.floor(free_range * position).astype(np.int64)
    return corners


def render(digits: np.ndarray, corners: np.ndarray, image_size: int) -> np.ndarray:
    """Clips (N, F, 1, S, S) uint8: each digit (N, D, 28, 28) pasted at its corners (N, F, D, 2), by maximum."""
    count, frame_count, digit_count = corners.shape[:3]
    canvas = np.zeros((count, frame_count, image_size, image_size), dtype=np.uint8)
    offsets = np.arange(DIGIT_SIZE)
    clip_index = np.arange(count)[:, None, None, None]
    frame_index = np.arange(frame_count)[None, :, None, None]
    for digit in range(digit_count):
        rows = corners[:, :, digit, 0, None, None] + offsets[:, None]  # (N, F, 28, 1)
        columns = corners[:, :, digit, 1, None, None] + offsets[None, :]  # (N, F, 1, 28)
        where = (clip_index, frame_index, rows, columns)
        canvas[where] = np.maximum(canvas[where], digits[:, digit, None])
    return canvas[:, :, None]


def generate(images: np.ndarray, labels: np.ndarray, split: str, clip_count: int, frame_count: int = 20,
             image_size: int = 64, digit_count: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clips (N, F, 1, S, S) uint8 and the class of each digit (N, D) int64, from one MNIST split's images
    (M, 28, 28) uint8 and labels (M,), by the protocol in this module's docstring."""
    clips = np.empty((clip_count, frame_count, 1, image_size, image_size), dtype=np.uint8)
    digit_labels = np.empty((clip_count, digit_count), dtype=np.int64)
    for block in range((clip_count + BLOCK - 1) // BLOCK):
        first = block * BLOCK
        size = min(BLOCK, clip_count - first)
        indices, starts, angles = (draw[:size] for draw in block_draws(seed, split, block, len(images), digit_count))
        corners = trajectories(starts, angles, frame_count, image_size - DIGIT_SIZE)
        clips[first:first + size] = render(images[indices], corners, image_size)
        digit_labels[first:first + size] = labels[indices]
    return clips, digit_labels


def digit_sets(count: int) -> list[tuple[int, ...]]:
    """The classes of clips of ``count`` digits: every sorted tuple of digit classes, (0, 0), (0, 1), ..., (9, 9)."""
    return list(itertools.combinations_with_replacement(range(10), count))


def digit_set_labels(object_labels: np.ndarray) -> np.ndarray:
    """Each clip's class (N,): the index in `digit_sets` of its sorted digits ``object_labels`` (N, count)."""
    index = {digits: label for label, digits in enumerate(digit_sets(object_labels.shape[1]))}
    return np.array([index[tuple(sorted(row))] for row in object_labels.tolist()], dtype=np.int64)


def digit_set_names(count: int) -> tuple[str, ...]:
    """The class names: "3 and 7", or "1, 3 and 7" for three digits."""
    def name(digits: tuple[int, ...]) -> str:
        words = [str(digit) for digit in digits]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    return tuple(name(digits) for digits in digit_sets(count))
