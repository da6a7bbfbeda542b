"""Text data: a tokenizer (characters or bytes), a file split by position, and windows of ``context`` ids.

Splits by position in the token stream: train the first 90%, validation the next 5%, test the last 5%.
Datasets: ``shakespeare`` (tinyshakespeare: ``data_dir`` a copy of it, as a file or a folder holding
``input.txt``, else downloaded) and ``text`` (``data_dir`` any UTF-8 file). The character tokenizer's
vocabulary is every character of the whole file, sorted; it is saved with the model (``FlowConfig.vocabulary``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, DataError, InputError
from .download import RemoteFile, fetch_files

SPLITS = {"train": (0.0, 0.90), "validation": (0.90, 0.95), "test": (0.95, 1.0)}
SHAKESPEARE = RemoteFile("input.txt", "6fb458f1232090904fb40fe944165e91",
                         ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",))
TEXT_DATASETS = ("shakespeare", "text")
TOKENIZERS = ("char", "byte")


class CharTokenizer:
    """One id per character of ``vocabulary`` (a string of distinct characters), in its order."""

    kind = "char"

    def __init__(self, vocabulary: str):
        if not vocabulary or len(set(vocabulary)) != len(vocabulary):
            raise ConfigError("a character vocabulary must be a non-empty string of distinct characters, got "
                              f"{len(vocabulary)} characters ({len(set(vocabulary))} distinct)")
        self.vocabulary = vocabulary
        self.index = {char: i for i, char in enumerate(vocabulary)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise InputError(f"characters {unknown[:10]!r} are not in the model's vocabulary of {self.size} "
                             f"characters ({self.vocabulary[:40]!r}...): remove them, or train on text that has them")
        return [self.index[char] for char in text]

    def decode(self, ids) -> str:
        return "".join(self.vocabulary[i] for i in ids)


class ByteTokenizer:
    """The 256 byte values: text as its UTF-8 bytes; raw bytes (valid UTF-8 or not) round-trip exactly."""

    kind = "byte"
    vocabulary = ""
    size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))

    def decode_bytes(self, ids) -> bytes:
        return bytes(ids)

    def decode(self, ids) -> str:
        """Text, with invalid UTF-8 (a character cut mid-way) shown as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def build_tokenizer(kind: str, vocabulary: str = "") -> CharTokenizer | ByteTokenizer:
    if kind not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of {list(TOKENIZERS)}, got {kind!r}")
    return ByteTokenizer() if kind == "byte" else CharTokenizer(vocabulary)


@dataclass
class TextData:
    """One split of a text: ``ids`` (N,) int64 in 0..vocabulary size - 1, and the tokenizer that made them."""

    name: str
    split: str
    ids: Tensor
    tokenizer: CharTokenizer | ByteTokenizer

    def __len__(self) -> int:
        return len(self.ids)

    def windows(self, context: int) -> Tensor:
        """Every non-overlapping window of ``context`` ids, (len // context, context); the tail is left out."""
        count = len(self.ids) // context
        return self.ids[:count * context].view(count, context)

    def random_windows(self, batch: int, context: int, generator: torch.Generator) -> Tensor:
        """``batch`` windows of ``context`` ids at uniformly random offsets, (batch, context)."""
        starts = torch.randint(0, len(self.ids) - context + 1, (batch,), generator=generator)
        return self.ids[starts[:, None] + torch.arange(context)]


def read_text_file(name: str, data_dir: str | None) -> tuple[Path, bytes]:
    """The file of a text dataset and its bytes."""
    if name not in TEXT_DATASETS:
        raise ConfigError(f"unknown text dataset {name!r}; available: {', '.join(TEXT_DATASETS)}")
    path = Path(data_dir) if data_dir else None
    if name == "text" and (path is None or not path.is_file()):
        raise DataError(f"dataset text needs data_dir = a UTF-8 text file (--data-dir FILE), got {data_dir!r}")
    if name == "shakespeare" and (path is None or path.is_dir()):
        path = fetch_files("shakespeare", [SHAKESPEARE], path)[SHAKESPEARE.name]
    return path, path.read_bytes()


def load_text(name: str, split: str, context: int, tokenizer: str = "char", data_dir: str | None = None,
              vocabulary: str = "") -> TextData:
    """``split`` (train, validation or test) of a text dataset as ids; see the module docstring.

    ``vocabulary``: a saved model's characters (empty: every character of the file). Each split must hold at
    least ``context`` + 1 tokens.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    path, raw = read_text_file(name, data_dir)
    if not raw:
        raise DataError(f"{path} is empty: give a UTF-8 text file with at least {20 * (context + 1)} characters")
    if tokenizer == "byte":
        text, coder = raw, build_tokenizer("byte")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not valid UTF-8 ({e}): convert it, or use tokenizer=byte") from None
        coder = build_tokenizer("char", vocabulary) if vocabulary else CharTokenizer.from_text(text)
    ids = torch.tensor(coder.encode(text), dtype=torch.long)
    low, high = (round(fraction * len(ids)) for fraction in SPLITS[split])
    if min(round(0.05 * len(ids)), high - low) < context + 1:
        raise DataError(f"{path} is too short: {len(ids):,} tokens give the {split} split {high - low} of them (5% "
                        f"for validation and test), fewer than context + 1 = {context + 1}; use a file of at least "
                        f"{20 * (context + 1):,} tokens or a shorter context")
    return TextData(name, split, ids[low:high], coder)
