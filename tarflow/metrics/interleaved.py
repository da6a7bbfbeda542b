"""The task metrics of a pretzel model (STARFlow2, issue 18) on interleaved MNIST sequences (`tarflow eval RUN`).

- likelihood, over the first sequences of the split, images noised as in training (uniform dequantization, or bin
  centres plus the training gaussian noise: then the image figure is of the noisy images, not a bits/dim of the
  data), as `train.interleaved.evaluate_interleaved` reports it:
  text bits/word = text nats / ln 2 / text targets (every word after ``<bos>`` through ``<eos>``, ``<image>``
  words included); text bits/char = the same nats / ln 2 / characters, the characters of those target words
  written as `decode_words` writes them (joined by single spaces, ``<image>`` and ``<eos>`` as written, 7 and 5
  characters; no ``<bos>``); image bits/dim = -(image nats / dims - ln(2/256)) / ln 2.
- text-to-image class consistency, on the held-out two-image prompts "a d1 : <image> and a d2 : <image>" (never
  in training): each generated in stages with the template forced (`generate_template`), both images classified;
  the fraction of first, second and both images of the digit named.
- image-to-text accuracy: the image of each of the split's first image-to-text sequences after "<image> shows",
  greedy words, `read_answer` against its label.
- arithmetic accuracy: the two images of the split's first arithmetic sequences after "<image> plus <image> is",
  greedy, `read_answer` against the sum of their labels; also over the held-out pairs alone.

The classifier is a function of model-space images (N, C, H, W) -> labels (N,): by default the library's MNIST
classifier (`metrics.classifier.dataset_classifier`, trained once and cached), reading images quantized to 8 bits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..data.interleaved import (HELD_OUT_ARITHMETIC, KINDS, WORDS, InterleavedData, encode_words, held_out_prompts,
                                read_answer)
from ..flows.pretzel import JointLikelihood, Pretzel
from ..progress import progress_bar
from ..sampling.interleaved_layout import generate_template, greedy_words
from ..train.interleaved import EVAL_BATCH, figures, noisy_batch
from ..viz import to_uint8

DEFAULT_COUNTS = {"likelihood": None, "text-to-image": 20, "image-to-text": 300, "arithmetic": 300}
GENERATION_BATCH = 50
LEVELS = 256
Classifier = Callable[[Tensor], Tensor]


def evaluate_tasks(model: Pretzel, data: InterleavedData, counts: dict[str, int | None], noise_std: float = 0.0,
                   seed: int = 0, classifier: Classifier | None = None, data_dir=None, progress: bool = True
                   ) -> dict:
    """Every task with a count above 0 (``counts`` as `DEFAULT_COUNTS`; likelihood None: the whole split), one
    JSON-ready dict. ``noise_std``: the model's training gaussian noise (0: uniform dequantization)."""
    model.eval()
    result = {}
    if counts.get("likelihood", None) != 0:
        result.update(likelihood(model, data, counts.get("likelihood"), noise_std, seed, progress))
    if counts.get("text-to-image"):
        classify = classifier or mnist_classifier(data_dir, progress)
        result.update(text_to_image_consistency(model, counts["text-to-image"], classify, noise_std, seed, progress))
    if counts.get("image-to-text"):
        result.update(image_to_text_accuracy(model, data, counts["image-to-text"], noise_std, seed, progress))
    if counts.get("arithmetic"):
        result.update(arithmetic_accuracy(model, data, counts["arithmetic"], noise_std, seed, progress))
    return result


def target_characters(ids: Tensor, is_image: Tensor, lengths: Tensor) -> Tensor:
    """(B,) characters of each row's text targets: its words after ``<bos>`` through ``<eos>`` joined by single
    spaces."""
    word_lengths = torch.tensor([len(word) for word in WORDS])
    used = (torch.arange(1, ids.shape[1]) < lengths[:, None]) & ~is_image[:, 1:]
    letters = torch.where(used, word_lengths[ids[:, 1:].clamp_min(0)], 0).sum(1)
    return letters + used.sum(1) - 1


@torch.no_grad()
def likelihood(model: Pretzel, data: InterleavedData, count: int | None, noise_std: float, seed: int,
               progress: bool = True) -> dict:
    """Bits/word, bits/char of the text and bits/dim of the images of the first ``count`` sequences (module doc)."""
    generator = torch.Generator().manual_seed(seed)
    count = len(data) if count is None else min(count, len(data))
    noise = "gaussian" if noise_std > 0 else "uniform"
    text = image = targets = dims = characters = 0.0
    for start in progress_bar(range(0, count, EVAL_BATCH), desc="likelihood", enabled=progress, leave=False):
        batch = noisy_batch(data, torch.arange(start, min(start + EVAL_BATCH, count)), noise, noise_std, generator)
        joint = model.log_likelihood(batch)
        text += joint.text.double().sum().item()
        image += joint.image.double().sum().item()
        targets += joint.text_targets.sum().item()
        dims += joint.image_dims.sum().item()
        characters += target_characters(batch.ids, batch.is_image, batch.lengths).sum().item()
    sums = JointLikelihood(*(torch.tensor([value], dtype=torch.float64) for value in (text, image, targets, dims)))
    return {**figures(sums), "text_bits_per_char": -text / math.log(2) / max(characters, 1),
            "likelihood_sequences": count, "text_characters": int(characters)}


def mnist_classifier(data_dir=None, progress: bool = True) -> Classifier:
    """The library's cached MNIST classifier as a function of model-space images (quantized to 8-bit levels)."""
    from .classifier import dataset_classifier

    network, _ = dataset_classifier("mnist", data_dir, progress=progress)
    return lambda images: network.predict(to_uint8(images.float().cpu(), LEVELS))


def text_to_image_consistency(model: Pretzel, per_prompt: int, classify: Classifier, noise_std: float, seed: int,
                              progress: bool = True, temperature: float = 1.0) -> dict:
    """Class consistency of the images generated for the held-out two-image prompts, ``per_prompt`` each."""
    generator = torch.Generator().manual_seed(seed)
    hits = []  # (rows, 2) per prompt: whether each image shows its digit
    prompts = held_out_prompts()
    for text, pair in progress_bar(prompts, desc="text-to-image", enabled=progress, leave=False):
        words = encode_words("<bos> " + text)
        for start in range(0, per_prompt, GENERATION_BATCH):
            rows = min(GENERATION_BATCH, per_prompt - start)
            images = generate_template(model, words, rows, temperature, generator, noise_std).batch.images
            predicted = classify(images.flatten(0, 1)).reshape(rows, 2).cpu()
            hits.append(predicted == torch.tensor(pair))
    hits = torch.cat(hits).double()
    return {"text_to_image_first": hits[:, 0].mean().item(), "text_to_image_second": hits[:, 1].mean().item(),
            "text_to_image_both": hits.prod(1).mean().item(), "text_to_image_prompts": len(prompts),
            "text_to_image_images": 2 * len(hits)}


def first_of_kind(data: InterleavedData, kind: str, count: int) -> Tensor:
    """The indices of the split's first ``count`` sequences of ``kind``."""
    return (data.kind_codes == KINDS.index(kind)).nonzero()[:count, 0]


def answers(model: Pretzel, data: InterleavedData, indices: Tensor, prompt: str, noise_std: float, seed: int,
            desc: str, progress: bool) -> list[int | None]:
    """The greedy answer (`read_answer` of the prompt and the words generated after it) with the images of each
    sequence of ``indices``."""
    generator = torch.Generator().manual_seed(seed)
    words = encode_words("<bos> " + prompt)
    read = []
    for start in progress_bar(range(0, len(indices), GENERATION_BATCH), desc=desc, enabled=progress, leave=False):
        images = data.batch(indices[start:start + GENERATION_BATCH]).images  # bin centres
        generated = greedy_words(model, words, images, noise_std=noise_std, generator=generator).cpu()
        read += [read_answer(words + row.tolist()) for row in generated]  # "shows a" / "is" are the prompt's
    return read


def image_to_text_accuracy(model: Pretzel, data: InterleavedData, count: int, noise_std: float, seed: int,
                           progress: bool = True) -> dict:
    """The fraction of test images whose greedy caption ("<image> shows a ...") names their digit."""
    indices = first_of_kind(data, "image-to-text", count)
    read = answers(model, data, indices, "<image> shows", noise_std, seed, "image-to-text", progress)
    correct = [answer == int(label) for answer, label in zip(read, data.digits[indices, 0])]
    return {"image_to_text_accuracy": sum(correct) / max(len(correct), 1), "image_to_text_images": len(correct)}


def arithmetic_accuracy(model: Pretzel, data: InterleavedData, count: int, noise_std: float, seed: int,
                        progress: bool = True) -> dict:
    """The fraction of test image pairs whose greedy "<image> plus <image> is ..." names the sum of their labels;
    also over the held-out pairs (never in training) alone."""
    indices = first_of_kind(data, "arithmetic", count)
    read = answers(model, data, indices, "<image> plus <image> is", noise_std, seed, "arithmetic", progress)
    labels = data.mnist_labels[data.image_indices[indices]]
    correct = [answer == int(pair.sum()) for answer, pair in zip(read, labels)]
    held_out = [hit for hit, pair in zip(correct, labels.tolist()) if tuple(pair) in HELD_OUT_ARITHMETIC]
    return {"arithmetic_accuracy": sum(correct) / max(len(correct), 1), "arithmetic_pairs": len(correct),
            "arithmetic_accuracy_held_out": sum(held_out) / len(held_out) if held_out else None,
            "arithmetic_held_out_pairs": len(held_out)}
