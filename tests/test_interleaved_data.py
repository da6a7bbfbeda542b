"""Interleaved text-image data (issue 18): the word tokenizer, the templates, determinism, held-out pairs kept out
of train, arithmetic sums, the position layout of a batch (checked against a naive rebuild), dequantization,
prompt parsing and answer reading, and their errors. A small fake MNIST; one test reads the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_helpers import trust_files, write_idx
from tarflow.data.interleaved import (BOS, EOS, HELD_OUT_ARITHMETIC, HELD_OUT_TEXT_TO_IMAGE, IMAGE, KINDS,
                                      NUMBER_WORDS, WORDS, InterleavedData, arithmetic, decode_words, encode_words,
                                      held_out_prompts, image_to_text, load_interleaved, parse_prompt, read_answer,
                                      sequence_ids, text_to_image)
from tarflow.data.quantize import quantize
from tarflow.errors import ConfigError, DataError, InputError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
          "seventeen eighteen".split()


def fake_split(count: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 digits (count, 1, 28, 28) and shuffled labels covering 0..9."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (count, 1, 28, 28), dtype=np.uint8))
    labels = torch.from_numpy(rng.permutation(np.arange(count) % 10).astype(np.int64))
    return images, labels


def make(split: str = "train", count: int = 400, seed: int = 0, patch_size: int = 4) -> InterleavedData:
    return InterleavedData.generate(*fake_split(seed=7 if split == "test" else 3), split, count, seed, patch_size)


def digit_words(text: str) -> list[int]:
    """The numbers named in ``text``, left to right."""
    return [NUMBERS.index(word) for word in text.split() if word in NUMBERS]


# ---------------------------------------------------------------- words and templates

def test_vocabulary_is_fixed_and_names_every_sum():
    assert WORDS[:11] == ("<bos>", "<eos>", "<image>", ":", ".", "a", "an", "and", "shows", "plus", "is")
    assert list(WORDS[11:]) == NUMBERS == list(NUMBER_WORDS)
    assert len(set(WORDS)) == len(WORDS) == 30
    assert (WORDS[BOS], WORDS[EOS], WORDS[IMAGE]) == ("<bos>", "<eos>", "<image>")


def test_templates_read_as_the_design_writes_them():
    assert text_to_image(7) == "a seven : <image>" and text_to_image(1) == "a one : <image>"
    assert text_to_image(7, 2) == "a seven : <image> and a two : <image>"
    assert text_to_image(8, 0) == "an eight : <image> and a zero : <image>"
    assert image_to_text(4) == "<image> shows a four ." and image_to_text(8) == "<image> shows an eight ."
    assert arithmetic(3, 4) == "<image> plus <image> is seven ."
    assert arithmetic(9, 9) == "<image> plus <image> is eighteen ."
    assert sequence_ids("image-to-text", (4,)) == [BOS] + encode_words("<image> shows a four .") + [EOS]


def test_encode_splits_punctuation_lowers_case_and_round_trips():
    expected = [WORDS.index(word) for word in "a seven : <image> and an eight : <image>".split()]
    assert encode_words("A Seven:<IMAGE> and an EIGHT: <image>") == expected
    assert encode_words("<image> shows a four.") == [WORDS.index(w) for w in "<image> shows a four .".split()]
    every = list(range(len(WORDS)))
    assert encode_words(decode_words(every)) == every
    assert decode_words([BOS, -1, -1, WORDS.index("is"), EOS, -1]) == "<bos> is <eos>"


def test_unknown_word_and_bad_id_are_named():
    with pytest.raises(InputError, match=r"\['cat'\].*vocabulary is <bos> <eos> <image>.*eighteen"):
        encode_words("a cat : <image>")
    with pytest.raises(InputError, match="nineteen"):
        encode_words("<image> plus <image> is nineteen .")
    with pytest.raises(InputError, match=r"\[30\].*30 words"):
        decode_words([BOS, 30])


def test_held_out_sets_follow_their_rules_and_prompts_name_their_pairs():
    pairs = [(first, second) for first in range(10) for second in range(10)]
    assert HELD_OUT_TEXT_TO_IMAGE == {pair for pair in pairs if (pair[0] + 3 * pair[1]) % 7 == 0}
    assert HELD_OUT_ARITHMETIC == {pair for pair in pairs if (3 * pair[0] + pair[1]) % 7 == 4}
    assert len(HELD_OUT_TEXT_TO_IMAGE) == 15 and len(HELD_OUT_ARITHMETIC) == 14
    train_sums = {first + second for first, second in pairs if (first, second) not in HELD_OUT_ARITHMETIC}
    assert train_sums == set(range(19))  # every answer word is still seen in training
    prompts = held_out_prompts()
    assert sorted(pair for _, pair in prompts) == sorted(HELD_OUT_TEXT_TO_IMAGE)
    for text, pair in prompts:
        assert tuple(digit_words(text)) == pair
        assert text.split().count("<image>") == 2 and text.split()[-1] == "<image>"
        assert ("an eight" in text) == (8 in pair) and "a eight" not in text


# ---------------------------------------------------------------- sequences

def test_same_seed_same_sequences_and_a_prefix_does_not_depend_on_the_count():
    first, again, longer, other = make(seed=5), make(seed=5), make(count=1500, seed=5), make(seed=6)
    assert torch.equal(first.words, again.words) and torch.equal(first.image_indices, again.image_indices)
    assert torch.equal(longer.words[:400], first.words) and torch.equal(longer.image_indices[:400], first.image_indices)
    assert not torch.equal(first.image_indices, other.image_indices)
    generator = torch.Generator().manual_seed(1)
    one = first.random_batch(8, generator)
    two = again.random_batch(8, torch.Generator().manual_seed(1))
    assert torch.equal(one.ids, two.ids) and torch.equal(one.images, two.images)


def test_held_out_pairs_appear_in_test_only_and_the_mix_holds():
    train, test = make("train", 3000), make("test", 3000)

    def pairs(data, kind):
        rows = (data.kind_codes == KINDS.index(kind)) & (data.image_indices[:, 1] >= 0)
        return {tuple(pair) for pair in data.mnist_labels[data.image_indices[rows]].tolist()}

    assert not pairs(train, "text-to-image") & HELD_OUT_TEXT_TO_IMAGE
    assert not pairs(train, "arithmetic") & HELD_OUT_ARITHMETIC
    assert len(pairs(train, "text-to-image")) == 85 and len(pairs(train, "arithmetic")) == 86
    assert pairs(test, "text-to-image") >= HELD_OUT_TEXT_TO_IMAGE
    assert pairs(test, "arithmetic") >= HELD_OUT_ARITHMETIC
    shares = torch.bincount(train.kind_codes, minlength=3).double() / len(train)
    assert torch.allclose(shares, torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64), atol=0.03)


def test_words_say_what_the_images_show():
    data = make(count=600)
    batch = data.batch(range(600))
    for row in range(600):
        text = decode_words(batch.ids[row])
        labels = [label for label in batch.image_labels[row].tolist() if label >= 0]
        if batch.kinds[row] == "arithmetic":
            assert text.split()[-3:] == [NUMBERS[sum(labels)], ".", "<eos>"] and len(labels) == 2
            assert read_answer(batch.ids[row]) == sum(labels)
        elif batch.kinds[row] == "image-to-text":
            assert digit_words(text) == labels and read_answer(text) == labels[0]
        else:
            assert digit_words(text) == labels and read_answer(text) is None


def naive_layout(words: list[int], image_tokens: int) -> tuple[list[int], list[bool], list[int]]:
    """The expanded sequence of one row, built word by word: ids, is_image, image starts."""
    ids, is_image, starts = [], [], []
    for word in words:
        ids.append(word)
        is_image.append(False)
        if word == IMAGE:
            starts.append(len(ids))
            ids += [-1] * image_tokens
            is_image += [True] * image_tokens
    return ids, is_image, starts


@pytest.mark.parametrize("patch_size", [4, 7])
def test_batch_layout_matches_a_naive_rebuild(patch_size):
    data = make(count=200, patch_size=patch_size)
    tokens = (28 // patch_size) ** 2
    indices = [3, 0, 17, 42, 99, 5, 150]
    batch = data.batch(indices)
    assert batch.ids.shape[1] == int(batch.lengths.max())  # the batch's longest, not a global maximum
    for row, index in enumerate(indices):
        words = [word for word in data.words[index].tolist() if word >= 0]
        ids, is_image, starts = naive_layout(words, tokens)
        length = len(ids)
        assert int(batch.lengths[row]) == length and ids[0] == BOS and ids[-1] == EOS
        assert batch.ids[row, :length].tolist() == ids and batch.is_image[row, :length].tolist() == is_image
        assert (batch.ids[row, length:] == -1).all() and not batch.is_image[row, length:].any()
        assert batch.image_starts[row, :len(starts)].tolist() == starts
        assert (batch.image_starts[row, len(starts):] == -1).all() and int(batch.image_count[row]) == len(starts)
        for start in starts:
            assert batch.ids[row, start - 1] == IMAGE and batch.is_image[row, start:start + tokens].all()
    single = data.batch([int(torch.nonzero(data.image_indices[:, 1] < 0)[0])])
    assert single.images.shape[1] == 1 and single.ids.shape[1] == int(single.lengths[0])


def test_images_are_dequantized_in_their_bins_and_unused_slots_are_empty():
    data = make(count=100)
    indices = list(range(20))
    centre, noisy = data.batch(indices), data.batch(indices, torch.Generator().manual_seed(0))
    for row, index in enumerate(indices):
        for slot, mnist_index in enumerate(data.image_indices[index].tolist()):
            if mnist_index < 0:
                assert (centre.images[row, slot] == 0).all() and centre.image_labels[row, slot] == -1
                continue
            levels = data.mnist_images[mnist_index]
            assert torch.equal(centre.images[row, slot], 2 * (levels.float() + 0.5) / 256 - 1)
            assert torch.equal(quantize(noisy.images[row, slot], 256), levels)
            assert centre.image_labels[row, slot] == data.mnist_labels[mnist_index]
    assert not torch.equal(noisy.images, centre.images) and noisy.images.abs().max() <= 1
    assert centre.to("cpu").ids is not None and centre.to("cpu").kinds == centre.kinds


def test_bad_data_settings_are_named():
    images, labels = fake_split()
    with pytest.raises(ConfigError, match="split"):
        InterleavedData.generate(images, labels, "validation", 10)
    with pytest.raises(ConfigError, match="patch_size 5"):
        InterleavedData.generate(images, labels, "train", 10, patch_size=5)
    with pytest.raises(DataError, match=r"no digit \[9\]"):
        InterleavedData.generate(images, labels.clamp(max=8), "train", 10)
    with pytest.raises(InputError, match="0..9"):
        make(count=10).batch([10])


def test_load_interleaved_takes_each_split_from_its_mnist_files(tmp_path, monkeypatch):
    arrays = {"train": fake_split(30, seed=1), "test": fake_split(20, seed=2)}
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    for split, (images, labels) in arrays.items():
        write_idx(tmp_path / names[split][0], images[:, 0].numpy())
        write_idx(tmp_path / names[split][1], labels.numpy())
    trust_files(monkeypatch, "mnist", tmp_path)
    for split, (images, labels) in arrays.items():
        data = load_interleaved(split, 50, data_dir=tmp_path, cache_dir=tmp_path / "cache", download=False,
                                progress=False)
        batch = data.batch(range(50))
        used = data.image_indices >= 0
        assert int(data.image_indices.max()) < len(images)
        assert torch.equal(batch.image_labels[used], labels[data.image_indices[used]])
        assert torch.equal(quantize(batch.images[used], 256), images[data.image_indices[used]])


def test_real_mnist_sequences(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the MNIST copy {SHARED_MNIST} is absent (it is only on the development machine)")
    from tarflow.data.formats import read_idx

    labels = torch.from_numpy(read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    data = load_interleaved("test", 300, data_dir=SHARED_MNIST, cache_dir=tmp_path, download=False, progress=False)
    assert len(data.mnist_labels) == 10_000 and data.image_tokens == 49 and int(data.lengths.max()) == 109
    used = data.image_indices >= 0
    assert torch.equal(data.mnist_labels[data.image_indices[used]], labels[data.image_indices[used]])
    batch = data.batch(range(300))
    arithmetic = [row for row, kind in enumerate(batch.kinds) if kind == "arithmetic"]
    assert arithmetic and all(read_answer(batch.ids[row]) == int(batch.image_labels[row].sum()) for row in arithmetic)


# ---------------------------------------------------------------- prompts and answers

def test_parse_prompt_fills_markers_left_to_right():
    image = torch.zeros(1, 28, 28)
    ids, slots = parse_prompt("a seven : <image>")
    assert ids == [BOS] + encode_words("a seven : <image>") and slots == [None]
    ids, slots = parse_prompt("<bos> <image> shows", [image])
    assert ids == [BOS, IMAGE, WORDS.index("shows")] and slots[0] is image
    other = torch.ones(1, 28, 28)
    ids, slots = parse_prompt("<image> plus <image>", [image, other])
    assert slots[0] is image and slots[1] is other
    ids, slots = parse_prompt("a one : <image> and a two : <image>", [image])
    assert slots[0] is image and slots[1] is None
    assert parse_prompt("") == ([BOS], [])


def test_prompt_errors_name_the_marker_and_the_fix():
    with pytest.raises(InputError, match=r"marker 1 of 2 \(word 1 .*--image FILE"):
        parse_prompt("<image> plus <image>")
    with pytest.raises(InputError, match=r"marker 1 of 1 \(word 4.*--image FILE"):
        parse_prompt("a seven : <image> and a two")
    with pytest.raises(InputError, match="2 images for the 1 <image> markers"):
        parse_prompt("a seven : <image>", [torch.zeros(1, 28, 28)] * 2)
    with pytest.raises(InputError, match="float tensor"):
        parse_prompt("<image> shows", [torch.zeros(1, 28, 28, dtype=torch.uint8)])
    with pytest.raises(InputError, match=r"outside \[-1, 1\]"):
        parse_prompt("<image> shows", [torch.full((1, 28, 28), 3.0)])
    with pytest.raises(InputError, match="<eos>"):
        parse_prompt("a seven : <image> <eos>")


def test_read_answer_takes_the_number_after_the_last_shows_a_or_is():
    assert read_answer("<bos> <image> shows an eight . <eos>") == 8
    assert read_answer(encode_words("<image> plus <image> is eighteen .")) == 18
    assert read_answer("<image> shows a two . <image> shows a five .") == 5
    assert read_answer("<image> shows a two . <eos> <image> shows a five .") == 2  # nothing after <eos> counts
    assert read_answer("<image> shows a :") is None and read_answer("<image> shows seven .") is None
    assert read_answer("<image> plus <image> is") is None and read_answer([BOS, -1, -1, EOS]) is None


# ---------------------------------------------------------------- single-modality views

def test_text_view_keeps_every_word_and_no_image():
    data = make(count=200)
    text = data.one_modality("text").batch(torch.arange(200))
    both = data.batch(torch.arange(200))
    assert text.image_count.eq(0).all() and not text.is_image.any() and text.images.shape[1] == 0
    for row in range(200):
        assert decode_words(text.ids[row]) == decode_words(both.ids[row])  # the same words, <image> kept
        assert int(text.lengths[row]) == int((both.ids[row] >= 0).sum())  # no position after an <image> word


def test_image_view_keeps_every_image_and_only_the_markers():
    data = make(count=200)
    image = data.one_modality("image").batch(torch.arange(200))
    both = data.batch(torch.arange(200))
    assert torch.equal(image.images, both.images) and torch.equal(image.image_count, both.image_count)
    for row in range(200):
        count = int(both.image_count[row])
        assert decode_words(image.ids[row]) == " ".join(["<bos>"] + ["<image>"] * count + ["<eos>"])
        assert int(image.is_image[row].sum()) == count * data.image_tokens
    with pytest.raises(ConfigError, match="modality must be one of"):
        data.one_modality("video")
