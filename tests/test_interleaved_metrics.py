"""The task metrics of a pretzel model (`tarflow.metrics.interleaved`, `tarflow eval` of a pretzel run) with a tiny
random model on a fake 8 px MNIST: values in range, bits/char over the characters it names, staged generation
forcing the template, and accuracies recomputed independently (a cache-free greedy decoder, the classifier's calls
matched to their prompts by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tarflow.data.interleaved as interleaved_data
import tarflow.metrics.interleaved as metrics
from tarflow.cli import main
from tarflow.data.interleaved import (HELD_OUT_TEXT_TO_IMAGE, WORDS, InterleavedData, decode_words, encode_words,
                                      read_answer)
from tarflow.flows.config import FlowConfig
from tarflow.flows.pretzel import Pretzel
from tarflow.sampling.interleaved_layout import generate_template
from tarflow.train.interleaved import evaluate_interleaved
from conftest import randomise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Pretzel:
    torch.manual_seed(0)
    config = FlowConfig(architecture="pretzel", image_size=8, channels=1, patch_size=4, width=32, head_dim=16,
                        mlp_ratio=2, num_blocks=3, layers_per_block=[1, 1, 2], context=40, words=" ".join(WORDS))
    return randomise(Pretzel(config).double(), seed=1, std=0.15).eval()


@pytest.fixture(scope="module")
def data() -> InterleavedData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 8, 8), generator=generator, dtype=torch.uint8)
    return InterleavedData.generate(images, torch.arange(200) % 10, "test", count=60)


def brightness_classifier(images: torch.Tensor) -> torch.Tensor:
    """A stand-in digit classifier: the mean pixel's tenth of [-1, 1]."""
    return ((images.mean((1, 2, 3)) + 1) * 5).floor().clamp(0, 9).long()


@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_likelihood_figures_are_the_trainers_and_bits_per_char_counts_the_written_words(model, data, noise_std):
    noise = "gaussian" if noise_std else "uniform"
    result = metrics.likelihood(model, data, 40, noise_std, seed=3, progress=False)
    trainer = evaluate_interleaved(model, data, noise, noise_std, 3, 40)
    assert math.isclose(result["text_bits_per_word"], trainer["text_bits_per_word"], rel_tol=1e-9)
    assert math.isclose(result["image_bits_per_dim"], trainer["image_bits_per_dim"], rel_tol=1e-9)
    words = [[int(i) for i in row if i >= 0][1:] for row in data.words[:40]]  # after <bos>, through <eos>
    characters = sum(len(decode_words(row)) for row in words)
    targets = sum(len(row) for row in words)
    assert result["text_characters"] == characters
    assert math.isclose(result["text_bits_per_char"] * characters, result["text_bits_per_word"] * targets,
                        rel_tol=1e-9)
    assert 0 < result["text_bits_per_char"] < result["text_bits_per_word"]


def test_staged_generation_forces_the_template_words(model):
    words = encode_words("<bos> a seven : <image> and a two : <image> <eos>")
    generated = generate_template(model, words, 3, generator=torch.Generator().manual_seed(0))
    batch, tokens = generated.batch, model.image_tokens
    assert batch.ids.shape[1] == len(words) + 2 * tokens
    for row in range(3):
        assert batch.ids[row][~batch.is_image[row]].tolist() == words
    markers = [position for position, word in enumerate(batch.ids[0].tolist()) if word == model.image_word]
    assert batch.image_starts[0].tolist() == [position + 1 for position in markers]
    assert batch.image_count.tolist() == [2, 2, 2]
    # one pass without a cache over the finished sequences gives back the noise each image token was drawn from
    u = torch.zeros(3, batch.ids.shape[1], generated.tokens.shape[-1], dtype=model.dtype)
    index = torch.zeros_like(batch.ids)
    for slot, start in enumerate(batch.image_starts[0].tolist()):
        u[:, start:start + tokens] = generated.tokens[:, slot]
        index[:, start:start + tokens] = torch.arange(tokens)
    with torch.no_grad():
        _, params = model.step(batch.ids.clamp_min(0), u, batch.is_image, None, 0, index)
    targets = batch.is_image[:, 1:]
    z, _ = model.transform.forward(u[:, 1:][targets][:, None], tuple(p[:, :-1][targets][:, None] for p in params))
    assert torch.allclose(z[:, 0], generated.noise.flatten(1, 2).reshape(-1, z.shape[-1]), atol=1e-9)


def test_text_to_image_consistency_matches_the_classifiers_verdicts(model):
    seen = []

    def classify(images):
        seen.append(images)
        return brightness_classifier(images)

    result = metrics.text_to_image_consistency(model, 3, classify, 0.0, seed=0, progress=False)
    pairs = sorted(HELD_OUT_TEXT_TO_IMAGE)
    assert len(seen) == len(pairs) and result["text_to_image_images"] == 2 * 3 * len(pairs)
    hits = torch.stack([brightness_classifier(images).reshape(3, 2) == torch.tensor(pair)
                        for images, pair in zip(seen, pairs)]).double()
    assert math.isclose(result["text_to_image_first"], hits[..., 0].mean().item())
    assert math.isclose(result["text_to_image_both"], hits.prod(-1).mean().item())
    assert all(images.shape == (6, 1, 8, 8) for images in seen)


def naive_greedy(model: Pretzel, prompt: str, images: torch.Tensor, max_words: int = 8) -> list[int]:
    """Greedy words by full passes without a cache, one row at a time."""
    words = encode_words("<bos> " + prompt)
    tokens, _ = model.encode_images(images.to(model.dtype))
    for _ in range(max_words):
        ids, is_image, index, rows = [], [], [], []
        for word in words:
            ids.append(word)
            is_image.append(False)
            index.append(0)
            rows.append(torch.zeros(tokens.shape[-1], dtype=model.dtype))
            if word == model.image_word:
                image = tokens[sum(1 for kind in ids if kind == model.image_word) - 1]
                ids += [-1] * len(image)
                is_image += [True] * len(image)
                index += list(range(len(image)))
                rows += list(image)
        log_probs, _ = model.step(torch.tensor([ids]).clamp_min(0), torch.stack(rows)[None],
                                  torch.tensor([is_image]), None, 0, torch.tensor([index]))
        scores = log_probs[0, -1].clone()
        scores[[model.bos, model.image_word]] = float("-inf")
        words.append(int(scores.argmax()))
        if words[-1] == model.eos:
            break
    return words


@pytest.mark.parametrize("task", ["image-to-text", "arithmetic"])
def test_accuracies_recomputed_with_a_cache_free_decoder(task, model, data):
    prompt = "<image> shows" if task == "image-to-text" else "<image> plus <image> is"
    count = 5
    compute = metrics.image_to_text_accuracy if task == "image-to-text" else metrics.arithmetic_accuracy
    result = compute(model, data, count, 0.0, seed=0, progress=False)
    indices = metrics.first_of_kind(data, task, count)
    correct = []
    with torch.no_grad():
        for index in indices.tolist():
            batch = data.batch([index])
            answer = read_answer(naive_greedy(model, prompt, batch.images[0, :int(batch.image_count[0])]))
            correct.append(answer == int(batch.image_labels[0, :int(batch.image_count[0])].sum()))
    name = "image_to_text_accuracy" if task == "image-to-text" else "arithmetic_accuracy"
    assert len(indices) == count and result[name] == sum(correct) / count


def test_eval_of_a_pretzel_run_prints_the_task_metrics(model, data, tmp_path, monkeypatch, capsys):
    model.float().save_pretrained(tmp_path / "model", {"noise": "gaussian", "noise_std": 0.3})
    model.double()
    monkeypatch.setattr(interleaved_data, "load_interleaved", lambda split, **options: data)
    monkeypatch.setattr(metrics, "mnist_classifier", lambda data_dir, progress: brightness_classifier)
    assert main(["eval", str(tmp_path / "model"), "--likelihood-count", "20", "--text-to-image-count", "1",
                 "--image-to-text-count", "4", "--arithmetic-count", "4", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    for name in ("text_to_image_first", "text_to_image_both", "image_to_text_accuracy", "arithmetic_accuracy"):
        assert 0 <= result[name] <= 1
    assert result["likelihood_sequences"] == 20 and result["image_to_text_images"] == 4
    assert math.isfinite(result["text_bits_per_char"]) and math.isfinite(result["image_bits_per_dim"])
    assert main(["eval", str(tmp_path / "model"), "--image-to-text-count", "0", "--arithmetic-count", "0",
                 "--text-to-image-count", "0", "--likelihood-count", "0", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out).keys() == {"dataset", "split", "model"}


@pytest.mark.parametrize("task, answer", [("image-to-text", "a three . <eos>"), ("arithmetic", "seven . <eos>")])
def test_the_answer_after_the_prompt_is_what_is_scored(task, answer, model, data, monkeypatch):
    """A decoder that always answers "three" (captioning) or "seven" (sums): the accuracy is the fraction of
    images showing 3 / pairs adding to 7, read through the prompt's "shows" / "is"."""
    def always(model, prompt, images, **options):
        return torch.tensor(encode_words(answer)).expand(len(images), -1)

    monkeypatch.setattr(metrics, "greedy_words", always)
    indices = metrics.first_of_kind(data, task, 20)
    labels = data.mnist_labels[data.image_indices[indices]]
    if task == "image-to-text":
        result = metrics.image_to_text_accuracy(model, data, 20, 0.0, seed=0, progress=False)
        expected = (labels[:, 0] == 3).double().mean().item()
    else:
        result = metrics.arithmetic_accuracy(model, data, 20, 0.0, seed=0, progress=False)
        expected = (labels.sum(1) == 7).double().mean().item()
    name = "image_to_text_accuracy" if task == "image-to-text" else "arithmetic_accuracy"
    assert expected > 0 and math.isclose(result[name], expected)
