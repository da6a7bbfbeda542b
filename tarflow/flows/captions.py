"""Captions of a caption-conditioned model: phrasings made from class labels, our own word tokenizer, and the
component that turns prompts, labels or caption ids into the rows a block's text prefix reads.

Caption ids are a long tensor (R, P), P = ``caption_length``: token ids >= 0, `PAD` after the last word, and a row
of `NULL` for the null caption (the unconditional branch of guidance, and caption dropout).

Phrasings: per caption set (``FlowConfig.captions``), templates x synonyms of each class. The TRAIN phrasings are
what training draws from; the HELD-OUT ones use templates never seen in training (their words are seen ones, since
a text encoder trained from scratch cannot know a word it never read), so class consistency on them measures
whether prompts never seen verbatim still land in the right class.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import Tensor

from ..data.moving_mnist import digit_sets
from ..errors import ConfigError, InputError
from .conditioning import Condition

NULL = -1  # every position of the null caption
PAD = -2  # positions after the caption's last token
UNKNOWN = "<unk>"  # our tokenizer's id 0: every word outside the vocabulary

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10_NAMES = (("airplane", "plane"), ("car", "automobile"), ("bird",), ("cat", "kitten"), ("deer",),
                 ("dog", "puppy"), ("frog", "toad"), ("horse", "pony"), ("ship", "boat"), ("truck", "lorry"))


def digit_pair_synonyms(pair: tuple[int, int]) -> tuple[str, ...]:
    """The ways to name a Moving MNIST clip's two digits: "3 and 7", "7 and 3", "three and seven", "seven and
    three" (two ways when the digits are the same)."""
    orders = dict.fromkeys([pair, pair[::-1]])
    return (*(f"{a} and {b}" for a, b in orders), *(f"{DIGIT_NAMES[a]} and {DIGIT_NAMES[b]}" for a, b in orders))


# {word}: a synonym of the class; {a_word}: it with its article (a seven, an eight)
CAPTION_SETS = {
    "digits": {"synonyms": [(name, str(k)) for k, name in enumerate(DIGIT_NAMES)],
               "train": ("a handwritten {word}", "the digit {word}", "a picture of {a_word}", "the number {word}",
                         "{a_word}"),
               "held-out": ("a picture of the digit {word}", "the handwritten number {word}", "{word} handwritten",
                            "digit {word}")},
    "cifar10": {"synonyms": CIFAR10_NAMES,
                "train": ("a photo of {a_word}", "a picture of {a_word}", "{a_word}", "the {word}"),
                "held-out": ("a photo of the {word}", "the picture of {a_word}", "{word} photo")},
    # Moving MNIST clips of two digits (text-to-video): a class per digit pair, `tarflow.data.moving_mnist`
    "moving-digits": {"synonyms": [digit_pair_synonyms(pair) for pair in digit_sets(2)],
                      "train": ("the digits {word}", "{word} bouncing", "digits {word} moving", "{word}"),
                      "held-out": ("the digits {word} bouncing", "{word} moving", "digits {word}")},
}


def with_article(word: str) -> str:
    """"an eight", "an 8", "an airplane", but "a one"."""
    vowel_sound = word[0] in "aeio8" and not word.startswith("one")
    return ("an " if vowel_sound else "a ") + word


def phrasings(caption_set: str, split: str) -> list[list[str]]:
    """The captions of each class (K lists) of ``caption_set`` in ``split`` ("train" or "held-out"), in a fixed order:
    template by template, synonym by synonym."""
    if caption_set not in CAPTION_SETS:
        raise ConfigError(f"unknown caption set {caption_set!r}; choose one of {sorted(CAPTION_SETS)}")
    if split not in ("train", "held-out"):
        raise ConfigError(f"phrasings are 'train' or 'held-out', got {split!r}")
    spec = CAPTION_SETS[caption_set]
    return [[template.format(word=word, a_word=with_article(word)) for template in spec[split] for word in words]
            for words in spec["synonyms"]]


def words_of(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation separates words and is dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def caption_vocabulary(caption_set: str) -> list[str]:
    """The words of the train phrasings, sorted, after `UNKNOWN` (id 0)."""
    words = {word for captions in phrasings(caption_set, "train") for caption in captions for word in words_of(caption)}
    return [UNKNOWN, *sorted(words)]


class WordTokenizer:
    """Prompt -> word ids of ``vocabulary`` (id 0 `UNKNOWN` for a word outside it, with a warning naming it)."""

    def __init__(self, vocabulary: list[str], length: int):
        self.ids = {word: index for index, word in enumerate(vocabulary)}
        self.length = length

    def __call__(self, prompts: list[str]) -> Tensor:
        rows = torch.full((len(prompts), self.length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = words_of(prompt)
            if len(words) > self.length:
                raise InputError(f"the prompt {prompt!r} has {len(words)} words but the model reads at most "
                                 f"{self.length} (caption_length): shorten it")
            unknown = [word for word in words if word not in self.ids]
            if unknown:
                warnings.warn(f"words outside the text encoder's vocabulary are read as {UNKNOWN}: "
                              f"{', '.join(unknown)} (in {prompt!r})", stacklevel=3)
            rows[row, :len(words)] = torch.tensor([self.ids.get(word, 0) for word in words], dtype=torch.long)
        return rows


class PretrainedTokenizer:
    """Prompt -> ids of a Hugging Face tokenizer, padded (`PAD`) or truncated to ``length`` tokens."""

    def __init__(self, tokenizer, length: int):
        self.tokenizer, self.length = tokenizer, length

    def __call__(self, prompts: list[str]) -> Tensor:
        encoded = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.length,
                                 return_tensors="pt")
        ids = encoded["input_ids"].long()
        return ids.masked_fill(encoded["attention_mask"] == 0, PAD)


class CaptionConditioning:
    """The conditioning component of a caption-conditioned model (``FlowConfig.text_encoder`` set), in the shape of
    `ClassConditioning`: ``check`` (prompts, class labels or caption ids -> checked ids), ``drop`` (caption
    dropout: the null caption), ``branches`` (guidance rows: the captions, then null captions).

    Class labels 0..K-1 of the caption set read as each class's first train phrasing (K, the null class, as the
    null caption), so every label-driven path (evaluation, sample grids, guidance-accuracy) works unchanged.
    """

    def __init__(self, tokenizer, caption_set: str, num_classes: int, length: int):
        self.tokenizer, self.caption_set, self.num_classes, self.length = tokenizer, caption_set, num_classes, length

    @property
    def null_class(self) -> int:
        return self.num_classes

    def null(self, rows: int) -> Tensor:
        return torch.full((rows, self.length), NULL, dtype=torch.long)

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Caption ids (B, P) of prompts; an empty prompt is refused."""
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"empty prompt {prompt!r}: give a caption such as "
                                 f"{phrasings(self.caption_set, 'held-out')[0][0]!r} (unconditional samples are the "
                                 f"null class, e.g. --label null)")
        return self.tokenizer(list(prompts))

    def captions(self, labels: Tensor, split: str = "train", generator: torch.Generator | None = None) -> Tensor:
        """Caption ids of class ``labels`` (the null class -> the null caption): a random phrasing of ``split`` per row
        with ``generator``, else each class's phrasings in turn (row i: phrasing floor(i / K) mod n of its class, so
        labels 0..K-1 repeated walk through every phrasing)."""
        table = phrasings(self.caption_set, split)
        indices = []
        for row, label in enumerate(labels.tolist()):
            count = len(table[label % self.num_classes])
            if generator is None:
                indices.append(row // self.num_classes % count)
            else:
                indices.append(int(torch.randint(count, (), generator=generator)))
        return self.phrased(labels, table, indices)

    def label_captions(self, labels: Tensor) -> Tensor:
        """Caption ids of class ``labels`` as a label reads: each class's first train phrasing (the null class -> the
        null caption)."""
        return self.phrased(labels, phrasings(self.caption_set, "train"), [0] * len(labels))

    def phrased(self, labels: Tensor, table: list[list[str]], indices: list[int]) -> Tensor:
        """Ids of phrasing ``indices[i]`` of row i's class in ``table``; null-class rows get the null caption."""
        prompts = [table[label % self.num_classes][index] for label, index in zip(labels.tolist(), indices)]
        ids = self.tokenizer(prompts) if prompts else self.null(0)
        ids[labels == self.num_classes] = NULL
        return ids

    def check(self, y, batch: int, device: torch.device) -> Tensor:
        """Caption ids (batch, P) on ``device`` from prompts (a list of strings), class labels (batch,) or ids."""
        if y is None:
            raise InputError(f"this model is caption-conditioned: pass {batch} prompts (a list of strings), class "
                             f"labels 0..{self.num_classes - 1} ({self.num_classes}: the null caption), or caption ids "
                             f"({batch}, {self.length})")
        if isinstance(y, (list, tuple)) and all(isinstance(prompt, str) for prompt in y):
            if len(y) != batch:
                raise InputError(f"{len(y)} prompts for {batch} rows: give one prompt per row")
            return self.tokenize(y).to(device)
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise InputError(f"labels or caption ids must be integers, got dtype {y.dtype}")
        if y.shape == (batch,):
            if batch and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                raise InputError(f"labels y must lie in 0..{self.num_classes - 1} (or {self.num_classes}, the null "
                                 f"caption), got values {int(y.min())}..{int(y.max())}")
            return self.label_captions(y.cpu()).to(device)
        if y.shape != (batch, self.length):
            raise InputError(f"caption ids must have shape ({batch}, {self.length}), got {tuple(y.shape)}")
        if batch and int(y.min()) < PAD:
            raise InputError(f"caption ids must be >= {PAD} (-1 null caption, -2 padding), got {int(y.min())}")
        return y.to(device=device, dtype=torch.long)

    def drop(self, ids: Tensor, probability: float, generator: torch.Generator) -> Tensor:
        """Caption dropout for guidance: each row becomes the null caption with ``probability``."""
        ids[torch.rand(len(ids), generator=generator) < probability] = NULL
        return ids

    def branches(self, ids: Tensor, batch: int, attn_temp: float, dtype: torch.dtype, device: torch.device):
        """The 2B rows of a guided pass: the captions, then null captions (attention temperature ``attn_temp``)."""
        temperature = torch.ones(2 * batch, device=device, dtype=dtype)
        temperature[batch:] = attn_temp
        return Condition(torch.cat([ids, torch.full_like(ids, NULL)]), temperature)
