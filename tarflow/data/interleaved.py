"""Interleaved text-image sequences from MNIST (STARFlow2 at small scale): words and digit images in one sequence.

A sequence is a list of positions, each TEXT (one word id of `WORDS`) or IMAGE (one patch token of an image).
Every sequence starts with ``<bos>`` and ends with ``<eos>``; the word ``<image>`` marks an image, whose
T_img = (image_size / patch_size)^2 tokens (raster order) are the positions right after it. Three kinds:

- ``text-to-image``: "a seven : <image>" or "a seven : <image> and a two : <image>";
- ``image-to-text``: "<image> shows a four .";
- ``arithmetic``: "<image> plus <image> is seven ." (the sum of the two digits as a number word).

Single-modality views (`InterleavedData.one_modality`), the baselines the joint model is measured against:
``text`` keeps every word and drops the images (each ``<image>`` word stays, as a marker with no tokens after it);
``image`` keeps the images and drops the words (``<bos>``, ``<image>`` and its tokens per image, ``<eos>``).

Held out (test split only): two-image text-to-image pairs (d1, d2) with (d1 + 3 d2) % 7 == 0 (15 of the 100),
and arithmetic pairs with (3 d1 + d2) % 7 == 4 (14 of the 100; every sum 0..18 keeps a train pair).

Randomness: sequences come in blocks of 1,000, block b drawing from numpy's PCG64 seeded with (seed, split, b)
(train 0, test 1): kind (BLOCK,), image count (BLOCK,), digits (BLOCK,), image choice (BLOCK, 2), in that order.
Sequence i is therefore the same whatever the number of sequences asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, InputError
from .quantize import place_in_bins

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
WORDS = ("<bos>", "<eos>", "<image>", ":", ".", "a", "an", "and", "shows", "plus", "is") + NUMBER_WORDS
WORD_IDS = {word: i for i, word in enumerate(WORDS)}
BOS, EOS, IMAGE = WORD_IDS["<bos>"], WORD_IDS["<eos>"], WORD_IDS["<image>"]
PAD = -1  # in `InterleavedBatch.ids`: image positions and padding after the end

KINDS = ("text-to-image", "image-to-text", "arithmetic")
KIND_MIX = (0.4, 0.3, 0.3)  # probability of each kind; text-to-image has one or two images, 1/2 each
SPLIT_STREAMS = {"train": 0, "test": 1}
DEFAULT_COUNTS = {"train": 60_000, "test": 5_000}
BLOCK = 1000  # sequences drawn from one random stream
LEVELS = 256  # MNIST grey levels
MAX_WORDS = 11  # the longest template: <bos> a seven : <image> and a two : <image> <eos>
ALL_PAIRS = tuple((first, second) for first in range(10) for second in range(10))
HELD_OUT_TEXT_TO_IMAGE = frozenset(pair for pair in ALL_PAIRS if (pair[0] + 3 * pair[1]) % 7 == 0)
HELD_OUT_ARITHMETIC = frozenset(pair for pair in ALL_PAIRS if (3 * pair[0] + pair[1]) % 7 == 4)
SINGLE_MODALITIES = ("text", "image")  # of `InterleavedData.one_modality`
TOKEN_PATTERN = re.compile(r"<[^<>\s]*>|[:.]|[^\s:.<>]+|\S")


# ---------------------------------------------------------------- words

def encode_words(text: str) -> list[int]:
    """Word ids of ``text``: lower case, ``:`` and ``.`` split off as words, ``<image>`` one word."""
    words = TOKEN_PATTERN.findall(text.lower())
    unknown = [word for word in words if word not in WORD_IDS]
    if unknown:
        raise InputError(f"unknown words {unknown[:10]} in {text!r}: the vocabulary is {' '.join(WORDS)}")
    return [WORD_IDS[word] for word in words]


def decode_words(ids) -> str:
    """The words of ``ids`` joined by spaces; negative ids (image positions, padding) are left out."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if i >= len(WORDS)]
    if bad:
        raise InputError(f"word ids {bad[:10]} are out of range: the vocabulary has {len(WORDS)} words, ids 0.."
                         f"{len(WORDS) - 1}")
    return " ".join(WORDS[i] for i in ids if i >= 0)


def number_phrase(number: int) -> str:
    """"a seven", "an eight": the article by the number word's sound ("an" before eight, eleven, eighteen)."""
    word = NUMBER_WORDS[number]
    return f"{'an' if word.startswith('e') else 'a'} {word}"


def text_to_image(*digits: int) -> str:
    """ "a seven : <image>" or "a seven : <image> and a two : <image>"."""
    return " and ".join(f"{number_phrase(digit)} : <image>" for digit in digits)


def image_to_text(digit: int) -> str:
    """ "<image> shows a four ."."""
    return f"<image> shows {number_phrase(digit)} ."


def arithmetic(first: int, second: int) -> str:
    """ "<image> plus <image> is seven .": the sum as a number word, 0..18."""
    return f"<image> plus <image> is {NUMBER_WORDS[first + second]} ."


TEMPLATES = {"text-to-image": text_to_image, "image-to-text": image_to_text, "arithmetic": arithmetic}


def sequence_ids(kind: str, digits: tuple[int, ...]) -> list[int]:
    """<bos>, the template's words, <eos>."""
    return [BOS] + encode_words(TEMPLATES[kind](*digits)) + [EOS]


def held_out_prompts() -> list[tuple[str, tuple[int, int]]]:
    """The held-out two-image text-to-image prompts (text, (d1, d2)), in pair order; only in the test split.

    The text has no <bos>/<eos>; its first image is named before its first <image>, the second after it."""
    return [(text_to_image(*pair), pair) for pair in sorted(HELD_OUT_TEXT_TO_IMAGE)]


def read_answer(words) -> int | None:
    """The number named right after the last "shows a"/"shows an"/"is" before the first <eos>, or None.

    ``words``: word ids (negative ids skipped) or text. Reads image-to-text and arithmetic answers."""
    text = words if isinstance(words, str) else decode_words(words)
    tokens = TOKEN_PATTERN.findall(text.lower())
    if "<eos>" in tokens:
        tokens = tokens[:tokens.index("<eos>")]
    answer = None
    for position, word in enumerate(tokens):
        following = tokens[position + 1:position + 3]
        if word == "shows" and len(following) == 2 and following[0] in ("a", "an"):
            answer = following[1]
        elif word == "is" and following:
            answer = following[0]
    return NUMBER_WORDS.index(answer) if answer in NUMBER_WORDS else None


def parse_prompt(text: str, images=None) -> tuple[list[int], list[Tensor | None]]:
    """Word ids of a prompt (<bos> first) and, per <image> marker left to right, its image (C, H, W) in [-1, 1],
    or None for the one the model generates: a marker without an image is allowed only as the prompt's last word."""
    ids = encode_words(text)
    if ids[:1] != [BOS]:
        ids = [BOS] + ids
    if EOS in ids or BOS in ids[1:]:
        raise InputError(f"the prompt {text!r} holds <eos> or a second <bos>: a prompt is the start of a sequence")
    images = list(images or [])
    markers = [position for position, word in enumerate(ids) if word == IMAGE]
    if len(images) > len(markers):
        raise InputError(f"{len(images)} images for the {len(markers)} <image> markers of the prompt {text!r}: "
                         f"give one image per marker (left to right), or add markers")
    for number, image in enumerate(images, 1):
        if not isinstance(image, Tensor) or image.ndim != 3 or not image.is_floating_point():
            raise InputError(f"image {number} must be a float tensor (C, H, W), got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}")
        if not bool(torch.isfinite(image).all()) or image.min() < -1 or image.max() > 1:
            raise InputError(f"image {number} has values outside [-1, 1]: give pixels in model space, "
                             f"2 (k + 1/2) / 256 - 1 for 8-bit levels k")
    slots = images + [None] * (len(markers) - len(images))
    for number, (position, image) in enumerate(zip(markers, slots), 1):
        if image is None and position != len(ids) - 1:
            raise InputError(f"the <image> marker {number} of {len(markers)} (word {position} of the prompt {text!r}, "
                             f"<bos> = word 0) has no image, and only the prompt's last word may be an image to "
                             f"generate: give it with --image FILE (one per marker, left to right)")
    return ids, slots


# ---------------------------------------------------------------- sequences

@dataclass
class InterleavedBatch:
    """Interleaved sequences padded to the batch's longest, L positions; K = the most images in one row."""

    ids: Tensor  # (B, L) long: word id at text positions, -1 at image positions and after the end
    is_image: Tensor  # (B, L) bool: image positions
    images: Tensor  # (B, K, C, H, W) float in [-1, 1]; unused slots zero
    image_count: Tensor  # (B,) long
    image_labels: Tensor  # (B, K) long: the digit shown, -1 for unused slots
    image_starts: Tensor  # (B, K) long: position of each image's first token, -1 for unused slots
    lengths: Tensor  # (B,) long: positions used, through <eos>
    kinds: list[str]

    def to(self, device) -> "InterleavedBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "kinds"}
        return replace(self, **moved)


@dataclass
class InterleavedData:
    """One split's sequences, stored compactly: word ids with <image> markers and the MNIST index of each image."""

    split: str
    words: Tensor  # (N, MAX_WORDS) long: <bos> .. <eos>, -1 after
    image_indices: Tensor  # (N, 2) long: MNIST index of each image in order, -1 for none
    kind_codes: Tensor  # (N,) long: index into KINDS
    digits: Tensor  # (N, 2) long: the digits the template names (text-to-image, image-to-text) or adds, -1 unused
    mnist_images: Tensor  # (M, 1, H, W) uint8 levels
    mnist_labels: Tensor  # (M,) long
    patch_size: int

    def __len__(self) -> int:
        return self.words.shape[0]

    @property
    def image_tokens(self) -> int:
        """T_img = (H / p) (W / p)."""
        return (self.mnist_images.shape[-2] // self.patch_size) * (self.mnist_images.shape[-1] // self.patch_size)

    @property
    def lengths(self) -> Tensor:
        """(N,) positions of each sequence: its words plus T_img per image."""
        return (self.words >= 0).sum(1) + self.image_tokens * (self.image_indices >= 0).sum(1)

    @classmethod
    def generate(cls, images: Tensor, labels: Tensor, split: str, count: int | None = None, seed: int = 0,
                 patch_size: int = 4) -> "InterleavedData":
        """``count`` sequences (default 60,000 train, 5,000 test) from one MNIST split's images (M, 1, H, W) uint8
        and labels (M,), by the protocol in this module's docstring."""
        if split not in SPLIT_STREAMS:
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        count = DEFAULT_COUNTS[split] if count is None else count
        if count < 1:
            raise ConfigError(f"count must be at least 1, got {count}")
        if images.ndim != 4 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise DataError(f"expected uint8 images (M, C, H, W) and labels (M,), got {images.dtype} "
                            f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if patch_size < 1 or images.shape[-1] % patch_size or images.shape[-2] % patch_size:
            raise ConfigError(f"patch_size {patch_size} must divide the image size {tuple(images.shape[-2:])}")
        labels_np = labels.numpy()
        pools = [np.flatnonzero(labels_np == digit) for digit in range(10)]
        missing = [digit for digit, pool in enumerate(pools) if not len(pool)]
        if missing:
            raise DataError(f"the {split} images have no digit {missing}: every digit 0..9 needs an image")
        kinds = np.empty(count, dtype=np.int64)
        digits = np.empty((count, 2), dtype=np.int64)
        indices = np.empty((count, 2), dtype=np.int64)
        for block in range((count + BLOCK - 1) // BLOCK):
            first = block * BLOCK
            size = min(BLOCK, count - first)
            drawn = draw_block(seed, split, block, pools)
            kinds[first:first + size], digits[first:first + size], indices[first:first + size] = (
                part[:size] for part in drawn)
        words = template_table()[kinds, digits[:, 0], digits[:, 1]]  # digit -1 picks the table's last slot
        return cls(split, torch.from_numpy(words), torch.from_numpy(indices), torch.from_numpy(kinds),
                   torch.from_numpy(digits), images, labels.long(), patch_size)

    def batch(self, indices, generator: torch.Generator | None = None) -> InterleavedBatch:
        """The sequences ``indices`` laid out position by position; pixels x = 2 (k + u) / 256 - 1 with
        u ~ U[0, 1) from ``generator``, or u = 1/2 (the bin centre) without one."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise InputError(f"sequence indices must be in 0..{len(self) - 1}, got {indices.tolist()[:10]}")
        words = self.words[indices]
        image_indices = self.image_indices[indices]
        tokens = self.image_tokens
        image_count = (image_indices >= 0).sum(1)
        every_marker = (words == IMAGE).long()
        rank = every_marker.cumsum(1) - every_marker  # each marker's index among the row's markers
        is_marker = every_marker.bool() & (rank < image_count[:, None])  # a text-only view's markers carry no image
        markers = is_marker.long()
        markers_before = markers.cumsum(1) - markers
        word_positions = torch.arange(MAX_WORDS) + tokens * markers_before  # (B, W): where each word lands
        slots = int(image_count.max()) if len(indices) else 0
        lengths = (words >= 0).sum(1) + tokens * image_count
        length = int(lengths.max()) if len(indices) else 0
        rows = torch.arange(len(indices))[:, None].expand_as(words)
        is_word = words >= 0
        ids = torch.full((len(indices), length), PAD, dtype=torch.long)
        ids[rows[is_word], word_positions[is_word]] = words[is_word]
        image_starts = torch.full((len(indices), slots), -1, dtype=torch.long)
        image_starts[rows[is_marker], markers_before[is_marker]] = word_positions[is_marker] + 1
        positions = torch.arange(length)
        is_image = ((positions >= image_starts[..., None]) & (positions < image_starts[..., None] + tokens)
                    & (image_starts[..., None] >= 0)).any(1)
        used = image_indices[:, :slots] >= 0
        levels = self.mnist_images[image_indices[:, :slots].clamp(min=0)]
        noise = torch.full(levels.shape, 0.5) if generator is None else torch.rand(levels.shape, generator=generator)
        images = place_in_bins(levels, noise, LEVELS) * used[..., None, None, None]
        image_labels = torch.where(used, self.mnist_labels[image_indices[:, :slots].clamp(min=0)], -1)
        kinds = [KINDS[code] for code in self.kind_codes[indices].tolist()]
        return InterleavedBatch(ids, is_image, images, image_count, image_labels, image_starts, lengths, kinds)

    def one_modality(self, modality: str) -> "InterleavedData":
        """The same sequences with one modality: ``text`` (images dropped, ``<image>`` words kept as markers) or
        ``image`` (words dropped: ``<bos>``, one ``<image>`` per image, ``<eos>``); see the module docstring."""
        if modality not in SINGLE_MODALITIES:
            raise ConfigError(f"modality must be one of {list(SINGLE_MODALITIES)}, got {modality!r}")
        if modality == "text":
            return replace(self, image_indices=torch.full_like(self.image_indices, -1))
        image_count = (self.image_indices >= 0).sum(1, keepdim=True)
        slots = torch.arange(MAX_WORDS)
        words = torch.where(slots <= image_count, IMAGE, PAD)
        words[:, 0] = BOS
        words = torch.where(slots == image_count + 1, EOS, words)
        return replace(self, words=words)

    def random_batch(self, size: int, generator: torch.Generator | None = None) -> InterleavedBatch:
        """``size`` sequences drawn uniformly with replacement, dequantized with the same ``generator``."""
        return self.batch(torch.randint(len(self), (size,), generator=generator), generator)


def draw_block(seed: int, split: str, block: int, pools: list[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block's kind codes (BLOCK,), digits (BLOCK, 2) and MNIST indices (BLOCK, 2), -1 where unused."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], block])
    kind_draw = rng.random(BLOCK)
    two_images = rng.random(BLOCK) < 0.5
    digit_draw = rng.random(BLOCK)
    image_draw = rng.random((BLOCK, 2))
    kinds = np.searchsorted(np.cumsum(KIND_MIX), kind_draw, side="right").clip(max=len(KINDS) - 1)
    digits = np.full((BLOCK, 2), -1, dtype=np.int64)
    single = (kinds == KINDS.index("image-to-text")) | ((kinds == KINDS.index("text-to-image")) & ~two_images)
    digits[single, 0] = np.floor(digit_draw[single] * 10).astype(np.int64)
    for kind, held_out in (("text-to-image", HELD_OUT_TEXT_TO_IMAGE), ("arithmetic", HELD_OUT_ARITHMETIC)):
        pairs = np.array([pair for pair in ALL_PAIRS if split == "test" or pair not in held_out])
        chosen = (kinds == KINDS.index(kind)) & ~single
        digits[chosen] = pairs[np.floor(digit_draw[chosen] * len(pairs)).astype(np.int64)]
    indices = np.full((BLOCK, 2), -1, dtype=np.int64)
    for digit, pool in enumerate(pools):
        where = digits == digit
        indices[where] = pool[np.floor(image_draw[where] * len(pool)).astype(np.int64)]
    return kinds, digits, indices


def template_table() -> np.ndarray:
    """Word ids (len(KINDS), 11, 11, MAX_WORDS) of every template, indexed by kind code and digits (-1, the last
    slot, for none), padded with -1."""
    table = np.full((len(KINDS), 11, 11, MAX_WORDS), PAD, dtype=np.int64)
    singles = [(kind, (digit,)) for kind in ("text-to-image", "image-to-text") for digit in range(10)]
    pairs = [(kind, pair) for kind in ("text-to-image", "arithmetic") for pair in ALL_PAIRS]
    for kind, digits in singles + pairs:
        ids = sequence_ids(kind, digits)
        table[KINDS.index(kind), digits[0], digits[1] if len(digits) > 1 else -1, :len(ids)] = ids
    return table


def load_interleaved(split: str = "train", count: int | None = None, seed: int = 0, patch_size: int = 4,
                     data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                     download: bool = True, progress: bool = True) -> InterleavedData:
    """The interleaved sequences of a split, built on the MNIST split of `load_dataset` (data_dir: a local copy
    of the four MNIST IDX files, else downloaded into the cache)."""
    from .datasets import load_dataset

    mnist = load_dataset("mnist", split, data_dir, cache_dir, download, progress=progress)
    return InterleavedData.generate(mnist.images, mnist.labels, split, count, seed, patch_size)
