"""Caption-conditioned models (a text prefix on the last block): the float64 contract on tiny random models (inverse,
log-det against an autograd Jacobian, KV cache against the uncached pass, Jacobi against sequential, save/load),
that the prefix reaches the tokens but never reads them, caption dropout, train/held-out phrasings, the Hugging
Face path with tiny local encoders, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import latent_config, randomise, tiny_config
from torch.autograd.functional import jacobian

from tarflow import TarFlow
from tarflow.errors import ConfigError, InputError
from tarflow.flows import Condition
from tarflow.flows.captions import CAPTION_SETS, NULL, PAD, caption_vocabulary, phrasings, words_of
from tarflow.sampling import JacobiSampler, SequentialSampler

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a handwritten seven", "the digit 3", "a picture of an eight", "seven handwritten"]
LAYOUTS = {"zero-start": {"layers_per_block": 1},
           "learned-start-rope": {"layers_per_block": [1, 1, 2], "start_token": "learned", "positions": "rope"}}


def caption_model(text_encoder: str = "learned", seed: int = 0, **options) -> TarFlow:
    config = tiny_config(num_classes=10, text_encoder=text_encoder, captions="digits", caption_length=6,
                         text_layers=1, **options)
    torch.manual_seed(seed)
    return randomise(TarFlow(config).double(), seed).eval()


@pytest.fixture(scope="module", params=[*LAYOUTS, "latents"])
def model(request):
    if request.param in LAYOUTS:
        return caption_model(**LAYOUTS[request.param])
    # STARFlow: 4-channel latents of a tiny random autoencoder, deep-shallow stack, the prefix on the deep block
    config = latent_config(request.getfixturevalue("tiny_autoencoder_dir"), text_encoder="learned", captions="digits",
                           caption_length=6, text_layers=1)
    torch.manual_seed(0)
    return randomise(TarFlow(config).double(), 0).eval()


def images(seed: int = 1, batch: int = 4, model: TarFlow | None = None) -> torch.Tensor:
    """Random data (batch, C, S, S) of ``model``'s modality (default: the pixel models' 2 x 4 x 4)."""
    shape = (2, 4, 4) if model is None else (model.config.channels, model.config.image_size, model.config.image_size)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_prefix_sits_on_the_last_block_only(model):
    assert [block.prefix is not None for block in model.blocks] == [False, False, True]
    assert all(block.class_embed is None for block in model.blocks)


def test_inverse_of_forward(model):
    x = images(model=model)
    z, _ = model(x, PROMPTS)
    assert not torch.allclose(z, x, atol=1e-3)
    assert torch.allclose(model.inverse(z, PROMPTS), x, atol=1e-10)


def test_logdet_matches_autograd_jacobian(model):
    x = images(model=model)
    _, logdet = model(x, PROMPTS)
    for i in range(len(x)):
        def f(v, i=i):
            return model(v.view(1, *x.shape[1:]), PROMPTS[i:i + 1])[0].flatten()

        expected = torch.linalg.slogdet(jacobian(f, x[i].flatten()))[1]
        assert torch.allclose(logdet[i], expected, atol=1e-9)


def test_kv_cache_matches_the_uncached_pass(model):
    """Params of every token, one token at a time from a cache that holds the prefix, equal the training pass."""
    block = model.blocks[-1]
    tokens = block.order.apply(model.patchify(images(model=model)))
    condition = Condition(model.conditioning.check(PROMPTS, 4, model.device))
    full = block.step(block.inputs(tokens, block.first, tokens.shape[1]), condition)
    cache = block.new_cache(condition, 4)
    steps = [block.step(block.inputs(tokens, t, t + 1), condition, cache, t - block.first)
             for t in range(block.first, tokens.shape[1])]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-12)


def test_jacobi_matches_sequential_with_guidance(model):
    from tarflow.sampling import Guidance

    guidance = Guidance(2.0, "tarflow", attn_temp=1.5)
    generator = torch.Generator().manual_seed(3)
    z = SequentialSampler(model).noise(4, generator=generator)
    sequential = SequentialSampler(model).sample(4, PROMPTS, guidance=guidance, z=z)
    jacobi = JacobiSampler(model, tol=0).sample(4, PROMPTS, guidance=guidance, z=z)
    assert torch.allclose(jacobi, sequential, atol=1e-9)


def test_save_load_round_trip(model, tmp_path):
    path = model.save_pretrained(tmp_path / "model")
    loaded = TarFlow.from_pretrained(path)
    assert loaded.config == model.config
    assert torch.equal(loaded.log_prob(images(model=model), PROMPTS), model.log_prob(images(model=model), PROMPTS))


def test_prefix_is_read_by_tokens_but_never_reads_them(model):
    """Another caption moves the params of every token; other tokens leave the prefix's hidden states unchanged."""
    block = model.blocks[-1]
    hidden = []
    hook = block.layers[-1].register_forward_hook(lambda module, inputs, output: hidden.append(output))
    x, other_x = images(1, model=model), images(2, model=model)
    try:
        z = model(x, PROMPTS)[0]
        model(other_x, PROMPTS)
    finally:
        hook.remove()
    positions = block.prefix_length + block.num_tokens - block.first
    prefix = [h.view(4, positions, -1)[:, :block.prefix_length] for h in hidden[-2:]]
    assert torch.equal(prefix[0], prefix[1])
    tokens = [h.view(4, positions, -1)[:, block.prefix_length:] for h in hidden[-2:]]
    assert not torch.allclose(tokens[0], tokens[1])
    other_caption = model(x, ["the digit 0"] * 4)[0]
    changed = (other_caption - z).abs().flatten(2).amax(-1).view(4, -1)  # every channel row moves
    assert (changed > 1e-6).all()


def test_labels_read_as_first_phrasing_and_null_class_as_null_caption(model):
    captions = model.conditioning
    labels = torch.arange(25) % 11
    ids = captions.check(labels, 25, model.device)
    first = captions.tokenize([phrasings("digits", "train")[k][0] for k in range(10)])
    for row, label in enumerate(labels.tolist()):
        assert torch.equal(ids[row], first[label]) if label < 10 else (ids[row] == NULL).all()
    x = images(batch=2, model=model)
    assert torch.equal(model.log_prob(x, torch.tensor([7, 10])),
                       model.log_prob(x, torch.cat([captions.tokenize(["a handwritten seven"]), captions.null(1)])))


def test_phrasings_in_turn_walk_through_every_phrasing(model):
    held_out = phrasings("digits", "held-out")
    per_class = len(held_out[0])
    labels = torch.arange(10 * per_class) % 10
    ids = model.conditioning.captions(labels, "held-out")
    expected = model.conditioning.tokenize([held_out[k][i // 10] for i, k in enumerate(labels.tolist())])
    assert torch.equal(ids, expected)
    assert len({tuple(row.tolist()) for row in ids}) == len(labels)


def test_caption_dropout_rate_and_training_draws():
    from tarflow.train.captions import training_condition

    config = caption_model().config
    labels = torch.arange(20_000) % 10
    ids = training_condition(labels, config, 0.3, torch.Generator().manual_seed(0))
    dropped = (ids[:, 0] == NULL).double().mean().item()
    assert abs(dropped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(labels))
    assert ((ids == NULL).all(1) == (ids[:, 0] == NULL)).all()  # a dropped row is null at every position
    kept = ids[ids[:, 0] != NULL]
    assert len({tuple(row.tolist()) for row in kept}) == sum(len(c) for c in phrasings("digits", "train"))


@pytest.mark.parametrize("caption_set", sorted(CAPTION_SETS))
def test_held_out_phrasings_are_new_sentences_of_known_words(caption_set):
    train, held_out = phrasings(caption_set, "train"), phrasings(caption_set, "held-out")
    every_train = {caption for captions in train for caption in captions}
    vocabulary = set(caption_vocabulary(caption_set))
    for captions in held_out:
        assert captions and not set(captions) & every_train
        assert all(set(words_of(caption)) <= vocabulary for caption in captions)
    for k, captions in enumerate(train):  # no caption names two classes
        assert not set(captions) & {c for j, other in enumerate(train) if j != k for c in other}


def test_prompt_errors_and_unknown_words(model):
    captions = model.conditioning
    with pytest.raises(InputError, match="empty prompt"):
        captions.check(["a seven", "  "], 2, model.device)
    with pytest.raises(InputError, match="caption_length"):
        captions.check(["one two three four five six seven"], 1, model.device)
    with pytest.raises(InputError, match="caption-conditioned"):
        model.log_prob(images(batch=1, model=model), None)
    with pytest.warns(UserWarning, match="banana"):
        ids = captions.check(["a banana seven"], 1, model.device)
    assert ids[0].tolist()[:3] == [captions.tokenizer.ids["a"], 0, captions.tokenizer.ids["seven"]]
    assert ids[0, 3:].eq(PAD).all()


def test_config_errors():
    with pytest.raises(ConfigError, match="caption set"):
        tiny_config(num_classes=10, text_encoder="learned")
    with pytest.raises(ConfigError, match="num_classes=10"):
        tiny_config(num_classes=3, text_encoder="learned", captions="digits")
    with pytest.raises(ConfigError, match="caption_length to at least 6"):
        tiny_config(num_classes=10, text_encoder="learned", captions="digits", caption_length=5)
    with pytest.raises(ConfigError, match="mixer=attention"):
        tiny_config(num_classes=10, text_encoder="learned", captions="digits", mixer="aft-full")
    with pytest.raises(ConfigError, match="an image, latent or video modality"):
        tiny_config(num_classes=10, text_encoder="learned", captions="digits", modality="text")


def test_default_config_has_no_prefix():
    model = TarFlow(tiny_config(num_classes=3))
    assert all(block.prefix is None and block.prefix_length == 0 for block in model.blocks)
    assert not any("prefix" in name for name in model.state_dict())


# ----- Hugging Face text encoders (the text extra), tiny random ones saved in tmp_path --------------------------
WORDS = ["a", "an", "the", "handwritten", "digit", "picture", "of", "seven", "eight", "3", "0", "number"]


def save_tiny_encoder(path, kind: str):
    transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {word: index for index, word in enumerate(["[PAD]", "[UNK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    if kind == "t5":
        config = transformers.T5Config(vocab_size=len(vocabulary), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, pad_token_id=0)
        encoder = transformers.T5EncoderModel(config)
    else:
        config = transformers.CLIPTextConfig(vocab_size=len(vocabulary), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                             pad_token_id=0)
        encoder = transformers.CLIPTextModel(config)
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_pretrained_encoder_contract(kind, tmp_path):
    directory = save_tiny_encoder(tmp_path / kind, kind)
    model = caption_model(str(directory))
    assert not any("encoder.model" in name for name in model.state_dict())  # frozen weights stay in their directory
    x = images(model=model)
    z, logdet = model(x, PROMPTS)
    assert torch.allclose(model.inverse(z, PROMPTS), x, atol=1e-10)
    block = model.blocks[-1]
    ids = model.conditioning.check(PROMPTS, 4, model.device)
    assert ((ids >= 0).sum(1) == torch.tensor([len(words_of(p)) for p in PROMPTS])).all()
    features = block.prefix.encoder(ids)
    assert (features[ids < 0] == 0).all() and (features[ids >= 0] != 0).any()
    other = model(x, ["the digit 0"] * 4)[0]
    assert not torch.allclose(other, z)
    path = model.save_pretrained(tmp_path / "flow")
    assert torch.equal(TarFlow.from_pretrained(path).log_prob(x, PROMPTS), model.log_prob(x, PROMPTS))


def test_missing_or_incompatible_encoder_directory(tmp_path):
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    with pytest.raises(ConfigError, match="config.json.*tokenizer"):
        caption_model(str(tmp_path / "missing"))
    flow_dir = caption_model().save_pretrained(tmp_path / "flow")  # a tarflow model is not a text encoder
    with pytest.raises(ConfigError, match="could not be loaded.*save_pretrained"):
        caption_model(str(flow_dir))
