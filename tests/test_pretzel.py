"""The Pretzel model of interleaved words and images (STARFlow2, issue 18) and its generation, in float64.

Tiny sizes: 8 px images, patch 4 (T = 4 tokens of D = 16 values per image), width 32, two shallow blocks and two
joint layers (the LM stream's ours, or a Hugging Face Llama directory's); every parameter re-drawn (`randomise`)
so that skips, heads and flows really act. Each check compares with an independent computation: autograd
Jacobians, a naive recompute of the likelihood from cached steps, the noise generation drew, a perturbation of one
position.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil

import pytest
import torch
from torch import Tensor

from tarflow.data.interleaved import WORDS, InterleavedBatch, InterleavedData
from tarflow.errors import ConfigError, InputError
from tarflow.flows.config import FlowConfig
from tarflow.flows.pretzel import JointLikelihood, Pretzel
from tarflow.flows.saving import load_model
from tarflow.nn.llama import read_tensors
from tarflow.sampling.interleaved import generate
from conftest import randomise, write_llama_directory

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_TOKENS = 4  # (8 / 4)^2
SEQUENCES = ["<bos> a seven : <image> and a two : <image> <eos>",  # text-to-image, two images
             "<bos> <image> shows a four . <eos>",  # image-to-text, shorter: padding after <eos>
             "<bos> <image> plus <image> is seven . <eos>"]  # arithmetic


def tiny_config(**options) -> FlowConfig:
    settings = dict(architecture="pretzel", image_size=8, channels=1, patch_size=4, width=32, head_dim=16,
                    mlp_ratio=2, num_blocks=3, layers_per_block=[1, 1, 2], context=40, words=" ".join(WORDS))
    return FlowConfig(**{**settings, **options})


@pytest.fixture(scope="module", params=["learned", "rope", "llama"])
def model(request, tmp_path_factory) -> Pretzel:
    """Our LM stream with learned or rotary positions, or a Hugging Face Llama directory's layers (GQA, 2 KV heads
    of 4; written without transformers) as the LM stream."""
    torch.manual_seed(0)
    options = {"positions": request.param}
    if request.param == "llama":
        directory = write_llama_directory(tmp_path_factory.mktemp("llama"), heads=4, kv_heads=2)
        options = {"positions": "learned", "language_model": directory}
    return randomise(Pretzel(tiny_config(**options)).double(), seed=1, std=0.15).eval()


def make_batch(texts: list[str], seed: int = 0) -> InterleavedBatch:
    """Sequences from text with each <image> followed by its T positions, random images in [-1, 1] (labelled 0)."""
    rows, starts = [], []
    for text in texts:
        ids, is_image, row_starts = [], [], []
        for word in text.split():
            ids.append(WORDS.index(word))
            is_image.append(False)
            if word == "<image>":
                row_starts.append(len(ids))
                ids += [-1] * IMAGE_TOKENS
                is_image += [True] * IMAGE_TOKENS
        rows.append((ids, is_image))
        starts.append(row_starts)
    length, slots = max(len(ids) for ids, _ in rows), max(len(s) for s in starts)
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(texts), slots, 1, 8, 8, dtype=torch.float64)
    image_starts = torch.full((len(texts), slots), -1)
    for row, row_starts in enumerate(starts):
        images[row, :len(row_starts)] = torch.rand(len(row_starts), 1, 8, 8, generator=generator,
                                                   dtype=torch.float64) * 2 - 1
        image_starts[row, :len(row_starts)] = torch.tensor(row_starts, dtype=torch.long)
    pad = [(ids + [-1] * (length - len(ids)), is_image + [False] * (length - len(ids))) for ids, is_image in rows]
    return InterleavedBatch(torch.tensor([ids for ids, _ in pad]), torch.tensor([flags for _, flags in pad]), images,
                            torch.tensor([len(s) for s in starts]), torch.where(image_starts >= 0, 0, -1),
                            image_starts, torch.tensor([len(ids) for ids, _ in rows]), ["test"] * len(texts))


def image_z(model: Pretzel, batch: InterleavedBatch, tokens: Tensor, image_index: Tensor) -> tuple[Tensor, Tensor]:
    """z (N, D) of every image token of the batch (position order) and its deep log-det (N,), from u tokens."""
    _, params = model.step(batch.ids, tokens, batch.is_image, None, 0, image_index)
    targets = batch.is_image[:, 1:]
    selected = tuple(param[:, :-1][targets][:, None] for param in params)
    z, logdet = model.transform.forward(tokens[:, 1:][targets][:, None], selected)
    return z[:, 0], logdet


def log_normal(z: Tensor) -> Tensor:
    return (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_shallow_flow_inverse_and_logdet(model):
    images = make_batch(SEQUENCES[:1]).images[0]  # (2, 1, 8, 8)
    tokens, logdet = model.encode_images(images)
    assert torch.allclose(model.decode_images(tokens), images, atol=1e-10)
    for image, expected in zip(images, logdet):
        jacobian = torch.autograd.functional.jacobian(lambda x: model.encode_images(x[None])[0].reshape(-1), image)
        assert torch.allclose(torch.linalg.slogdet(jacobian.reshape(64, 64))[1], expected, atol=1e-9)


def test_image_logdets_match_autograd_jacobians(model):
    """Given the words, the deep map u -> z of a row's two images (the second reads the first) has log-det
    -sum a, and the whole map x -> z has the log-det in the image log-likelihood: both against autograd."""
    batch = make_batch(SEQUENCES[:1])
    tokens, image_index, shallow_logdet = model.sequence_tokens(batch)
    z, deep_logdet = image_z(model, batch, tokens, image_index)
    u = tokens[batch.is_image]  # (2 T, D)

    def z_of_u(values: Tensor) -> Tensor:
        placed = tokens.index_put((batch.is_image,), values.reshape(u.shape))
        return image_z(model, batch, placed, image_index)[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(z_of_u, u.reshape(-1))
    assert torch.allclose(torch.linalg.slogdet(jacobian)[1], deep_logdet.sum(), atol=1e-9)

    def z_of_x(images: Tensor) -> Tensor:
        moved = dataclasses.replace(batch, images=images)
        placed, index, _ = model.sequence_tokens(moved)
        return image_z(model, moved, placed, index)[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(z_of_x, batch.images).reshape(128, 128)
    likelihood = model.log_likelihood(batch)
    expected = log_normal(z).sum() + torch.linalg.slogdet(jacobian)[1]
    assert torch.allclose(likelihood.image[0], expected, atol=1e-9)
    assert torch.allclose(likelihood.image[0], log_normal(z).sum() + deep_logdet.sum() + shallow_logdet[0], atol=1e-9)


@pytest.mark.parametrize("position", [3, 4, 5, 8, 13])  # a word, the <image> word, an image's first and last token
def test_one_causal_mask_in_both_streams(model, position):
    """Changing position p (its word, or its image token) leaves both streams' rows before p exactly as they were,
    and changes both at p."""
    batch = make_batch(SEQUENCES[:1])
    tokens, image_index, _ = model.sequence_tokens(batch)
    ids = batch.ids.clone()
    if batch.is_image[0, position]:
        tokens = tokens.clone()
        tokens[0, position] += 0.5
    else:
        ids[0, position] = (ids[0, position] + 7) % len(WORDS)
    before = model.streams(model.embed(batch.ids, model.sequence_tokens(batch)[0], batch.is_image, image_index, 0))
    after = model.streams(model.embed(ids, tokens, batch.is_image, image_index, 0))
    for old, new in zip(before, after):  # LM stream, flow stream: rows (L, W)
        assert torch.allclose(old[:position], new[:position], rtol=0, atol=1e-12)
        assert not torch.allclose(old[position], new[position], atol=1e-6)


def test_cached_steps_equal_the_full_pass(model):
    """log p from one KV cache (a prompt chunk, then one position per call) recomputed naively equals
    log_likelihood, for rows of different layouts (and padding) side by side."""
    batch = make_batch(SEQUENCES)
    likelihood = model.log_likelihood(batch)
    tokens, image_index, shallow_logdet = model.sequence_tokens(batch)
    rows, length = batch.ids.shape
    cache = model.new_cache(rows, length)
    chunk = 3
    word_log_probs, (a, b) = model.step(batch.ids[:, :chunk], tokens[:, :chunk], batch.is_image[:, :chunk], cache, 0,
                                        image_index[:, :chunk])
    predictions = [(word_log_probs[:, t], a[:, t], b[:, t]) for t in range(chunk)]
    for pos in range(chunk, length - 1):
        word_log_probs, (a, b) = model.step(batch.ids[:, pos].clamp_min(0), tokens[:, pos], batch.is_image[:, pos],
                                            cache, pos, image_index[:, pos])
        predictions.append((word_log_probs, a, b))
    for row in range(rows):
        text = image = 0.0
        for target in range(1, int(batch.lengths[row])):
            word_log_prob, a, b = (value[row] for value in predictions[target - 1])
            if batch.is_image[row, target]:
                z = (tokens[row, target] - b) * torch.exp(-a)
                image += log_normal(z) - a.sum()
            else:
                text += word_log_prob[batch.ids[row, target]]
        assert torch.allclose(likelihood.text[row], torch.as_tensor(text), atol=1e-9)
        assert torch.allclose(likelihood.image[row], image + shallow_logdet[row], atol=1e-9)
    assert likelihood.text_targets.tolist() == [10, 6, 7]  # the words after <bos>, through <eos>
    assert likelihood.image_dims.tolist() == [128, 64, 128]



def test_batches_of_the_data_module_score_each_row_as_alone(model):
    """A batch of the interleaved data (tiny fake MNIST: 8 px digits) scores each row as that row on its own,
    without the padding the longer rows bring."""
    generator = torch.Generator().manual_seed(8)
    fake = torch.randint(0, 256, (30, 1, 8, 8), generator=generator, dtype=torch.uint8)
    data = InterleavedData.generate(fake, torch.arange(30) % 10, "train", count=12, patch_size=4)
    batch = data.batch(torch.arange(12), torch.Generator().manual_seed(9))
    assert len(set(batch.kinds)) == 3 and len(set(batch.lengths.tolist())) > 1
    together = model.log_likelihood(batch)
    for row in range(12):
        alone = model.log_likelihood(single_row(batch, row))
        assert torch.allclose(alone.text, together.text[row:row + 1], atol=1e-10)
        assert torch.allclose(alone.image, together.image[row:row + 1], atol=1e-10)


def single_row(batch: InterleavedBatch, row: int) -> InterleavedBatch:
    """Row ``row`` of ``batch`` cut to its own length and image count."""
    length, count = int(batch.lengths[row]), int(batch.image_count[row])
    return InterleavedBatch(batch.ids[row:row + 1, :length], batch.is_image[row:row + 1, :length],
                            batch.images[row:row + 1, :count], batch.image_count[row:row + 1],
                            batch.image_labels[row:row + 1, :count], batch.image_starts[row:row + 1, :count],
                            batch.lengths[row:row + 1], batch.kinds[row:row + 1])


def prompt(text: str) -> list[int]:
    return [WORDS.index(word) for word in text.split()]


def test_generated_image_tokens_reproduce_their_noise(model):
    """The tokens generation wrote into the cache, read back by the full pass, give exactly the z it drew; their
    decoded images encode back to them; every <image> word is followed by its T image positions. <image> is made
    likely and <eos> unlikely, so that rows write images at different positions (in one step, one row's image token
    beside another's word)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.bias[WORDS.index("<image>")] += 3
        model.lm_head.bias[WORDS.index("<eos>")] -= 3
    result = generate(model, prompt("<bos> a seven : <image>"), max_length=30, temperature=0.8,
                      generator=torch.Generator().manual_seed(3), batch=3)
    present = result.batch.image_starts >= 0
    assert present[:, 0].all() and not result.given.any()
    tokens = torch.zeros(*result.batch.ids.shape, 16, dtype=torch.float64)
    image_index = torch.zeros_like(result.batch.ids)
    for row, slot in present.nonzero().tolist():
        start = int(result.batch.image_starts[row, slot])
        assert result.batch.ids[row, start - 1] == WORDS.index("<image>")
        assert result.batch.is_image[row, start:start + IMAGE_TOKENS].all()
        tokens[row, start:start + IMAGE_TOKENS] = result.tokens[row, slot]
        image_index[row, start:start + IMAGE_TOKENS] = torch.arange(IMAGE_TOKENS)
    assert result.batch.is_image.sum() == present.sum() * IMAGE_TOKENS
    mixed = result.batch.is_image.any(0) & (result.batch.ids >= 0).any(0)
    assert mixed.any()  # a position where one row wrote an image token and another a word
    z, _ = image_z(model, result.batch, tokens, image_index)
    assert torch.allclose(z, result.noise[present].reshape(-1, 16), atol=1e-10)
    encoded, _ = model.encode_images(result.batch.images[present])
    assert torch.allclose(encoded, result.tokens[present], atol=1e-10)
    likelihood = model.log_likelihood(result.batch)  # generated sequences are a batch
    assert torch.isfinite(likelihood.text + likelihood.image).all()


def counting_encoder(model: Pretzel, monkeypatch) -> list[int]:
    """Images per call of model.encode_images from now on."""
    calls, encode = [], model.encode_images

    def counted(images):
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(model, "encode_images", counted)
    return calls


def test_given_images_are_encoded_once_and_generated_ones_never(model, monkeypatch):
    """An image given in the prompt goes through the encoder once for all rows; the images the model generates
    after it (and the words after those) never do."""
    calls = counting_encoder(model, monkeypatch)
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    result = generate(model, prompt("<bos> <image> plus <image>"), [image, None], max_length=36,
                      generator=torch.Generator().manual_seed(5), batch=3)
    assert calls == [1]
    assert result.given[:, 0].all() and not result.given[:, 1:].any() and (result.batch.image_count >= 2).all()
    assert torch.equal(result.batch.images[:, 0], image.expand(3, -1, -1, -1))


def test_noise_level_given_images_and_tweedie_outputs(model, monkeypatch):
    """With noise_std: the given image is encoded with noise of that std (the tokens the cache read), the only other
    encoder call is the one Tweedie evaluation of the finished sequences, and each generated image moves by
    sigma^2 times the gradient of the sequence's log-density."""
    sigma, image = 0.3, torch.zeros(1, 8, 8, dtype=torch.float64)
    calls = counting_encoder(model, monkeypatch)
    denoised = generate(model, prompt("<bos> <image> and <image>"), [image, None], max_length=20,
                        generator=torch.Generator().manual_seed(6), batch=2, noise_std=sigma)
    assert calls == [1, int(denoised.batch.image_count.sum())]
    noisy = image + sigma * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.allclose(denoised.tokens[:, 0], model.encode_images(noisy)[0].expand(2, -1, -1), atol=1e-12)
    raw = model.decode_images(denoised.tokens[:, 1])
    images = denoised.batch.images.clone()
    images[:, 0] = noisy[0]
    images[:, 1] = raw
    with torch.enable_grad():
        variable = images.requires_grad_(True)
        moved = dataclasses.replace(denoised.batch, images=variable)
        likelihood = model.log_likelihood(moved)
        (gradient,) = torch.autograd.grad((likelihood.text + likelihood.image).sum(), variable)
    assert torch.allclose(denoised.batch.images[:, 1], raw + sigma ** 2 * gradient[:, 1], atol=1e-10)
    assert torch.equal(denoised.batch.images[:, 0], image.expand(2, -1, -1, -1))


def test_greedy_words_are_the_most_likely(model):
    """word_temperature 0 writes the argmax word of the model's own prediction at each text position."""
    result = generate(model, prompt("<bos> <image> shows"), [torch.zeros(1, 8, 8, dtype=torch.float64)],
                      max_length=12, word_temperature=0, generator=torch.Generator().manual_seed(7))
    row_length = int(result.batch.lengths[0])
    tokens = torch.zeros(*result.batch.ids.shape, 16, dtype=torch.float64)
    tokens[result.batch.is_image] = result.tokens[result.batch.image_starts >= 0].reshape(-1, 16)
    image_index = torch.zeros_like(result.batch.ids)
    for start in result.batch.image_starts[0][result.batch.image_starts[0] >= 0].tolist():
        image_index[0, start:start + IMAGE_TOKENS] = torch.arange(IMAGE_TOKENS)
    word_log_probs, _ = model.step(result.batch.ids, tokens, result.batch.is_image, None, 0, image_index)
    word_log_probs[..., WORDS.index("<bos>")] = float("-inf")  # never generated
    for pos in range(7, row_length):  # the prompt takes positions 0 .. 6
        if pos + IMAGE_TOKENS >= 12:  # an image would not fit: <image> is never generated there
            word_log_probs[0, pos - 1, WORDS.index("<image>")] = float("-inf")
        if not result.batch.is_image[0, pos]:
            assert result.batch.ids[0, pos] == word_log_probs[0, pos - 1].argmax()


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "pretzel", metadata={"noise_std": 0.5})
    loaded = load_model(Pretzel, tmp_path / "pretzel")
    assert loaded.config == model.config and loaded.words == list(WORDS) and loaded.metadata == {"noise_std": 0.5}
    batch = make_batch(SEQUENCES)
    expected, got = model.log_likelihood(batch), loaded.log_likelihood(batch)
    assert torch.equal(expected.text, got.text) and torch.equal(expected.image, got.image)


def test_loss_is_per_unit(model):
    likelihood = JointLikelihood(torch.tensor([-3.0, -5.0]), torch.tensor([-64.0, 32.0]), torch.tensor([2, 6]),
                                 torch.tensor([64, 128]))
    assert torch.isclose(likelihood.loss(), torch.tensor(8 / 8 + 32 / 192))


def test_prompt_errors(model):
    image = torch.zeros(1, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match=r"<image> at word 1 .*--image FILE"):
        generate(model, prompt("<bos> <image> plus <image>"), [None, image], max_length=30)
    with pytest.raises(InputError, match=r"<image> at word 1 .*--image FILE"):
        generate(model, prompt("<bos> <image> shows a"), max_length=30)
    with pytest.raises(InputError, match="starts with <bos>"):
        generate(model, prompt("a seven : <image>"), max_length=30)
    with pytest.raises(InputError, match="2 <image> words but 1 images"):
        generate(model, prompt("<bos> <image> plus <image>"), [image], max_length=30)
    with pytest.raises(InputError, match=r"shape \(1, 8, 8\)"):
        generate(model, prompt("<bos> <image> shows"), [torch.zeros(8, 8)], max_length=30)
    with pytest.raises(InputError, match="at most the model's context"):
        generate(model, prompt("<bos> <image> shows"), [image], max_length=41)
    with pytest.raises(InputError, match="no <eos>"):
        generate(model, prompt("<bos> a <eos>"), max_length=30)


def test_a_text_only_baseline_generates_no_images(model):
    baseline = copy.copy(model)
    baseline.metadata = {"single_modality": "text"}
    with pytest.raises(InputError, match="text-only baseline"):
        generate(baseline, prompt("<bos> a seven :"), max_length=30)


def test_batch_errors(model):
    batch = make_batch(SEQUENCES[1:2])
    batch.is_image[0, -1] = True
    with pytest.raises(InputError, match="is_image must cover exactly each image's tokens"):
        model.log_likelihood(batch)
    long = make_batch(["<bos> " + "<image> " * 8 + "<eos>"])
    with pytest.raises(InputError, match="longer than the model's context"):
        model.log_likelihood(long)


@pytest.mark.parametrize("options, message", [
    ({"transform": "additive"}, "transform=affine"),
    ({"words": "<bos> <eos> a"}, r"missing: \['<image>'\]"),
    ({"words": "<bos> <eos> <image> a a"}, "once"),
    ({"num_classes": 3}, "num_classes=0"),
    ({"context": 5}, "at least 6"),
    ({"architecture": "flow"}, "leave it unset"),
])
def test_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**options)


def test_a_model_needs_its_vocabulary():
    with pytest.raises(ConfigError, match="vocabulary is empty"):
        Pretzel(tiny_config(words=""))


def test_a_hugging_face_language_model_is_the_lm_stream(tmp_path):
    directory = write_llama_directory(tmp_path / "llama", family="qwen2", heads=4, kv_heads=1)
    model = Pretzel(tiny_config(language_model=directory))
    tensors = read_tensors(tmp_path / "llama")
    for name, parameter in model.lm_layers.state_dict().items():
        assert torch.equal(parameter, tensors["model.layers." + name])
    assert model.config.language_model_config == (tmp_path / "llama" / "config.json").read_text()
    assert model.language_model_words == 0  # no tokenizer.json: our word embedding and head as they were
    model.save_pretrained(tmp_path / "pretzel")
    shutil.rmtree(tmp_path / "llama")  # a saved model needs the directory no more
    loaded = load_model(Pretzel, tmp_path / "pretzel")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_words_start_from_the_language_models_rows(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="needs the tokenizers package (tarflow[text])")
    directory = write_llama_directory(tmp_path / "llama")
    plain = [word for word in WORDS if not word.startswith("<")]
    vocabulary = {"[UNK]": 0, **{word: index + 1 for index, word in enumerate(plain)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "llama" / "tokenizer.json"))
    model = Pretzel(tiny_config(language_model=directory))
    tensors = read_tensors(tmp_path / "llama")
    assert model.language_model_words == len(plain)
    for word in ("seven", "plus", ":"):
        assert torch.equal(model.word_embed.weight[WORDS.index(word)],
                           tensors["model.embed_tokens.weight"][vocabulary[word]])
        assert torch.equal(model.lm_head.weight[WORDS.index(word)], tensors["lm_head.weight"][vocabulary[word]])
    assert not torch.equal(model.word_embed.weight[WORDS.index("<bos>")], tensors["model.embed_tokens.weight"][0])


def test_language_model_errors(tmp_path):
    directory = write_llama_directory(tmp_path / "llama", hidden=48, layers=3)
    with pytest.raises(ConfigError, match="hidden size 48 and 3 layers: set width=48 and the last of layers_per_block "
                                          "to 3"):
        tiny_config(language_model=directory)
    with pytest.raises(ConfigError, match="holds no config.json"):
        tiny_config(language_model=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="language_model is an option of architecture=pretzel"):
        FlowConfig(language_model=directory)
    with pytest.raises(ConfigError, match="set from language_model"):
        tiny_config(language_model_config="{}")
