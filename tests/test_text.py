"""TarFlowLM: tokenizers and text splits, the text modality's contract in float64, the ELBO is a bound, Mix-d and
generation with a prompt, and the discrete baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from conftest import randomise
from tarflow import FlowConfig, TarFlow
from tarflow.data.text import ByteTokenizer, CharTokenizer, load_text
from tarflow.errors import ConfigError, DataError, InputError
from tarflow.flows.language import DiscreteAR, build_language_model, log_likelihood
from tarflow.sampling.text import flow_window, generate

pytestmark = pytest.mark.usefixtures("one_thread")

VOCABULARY = "ab\n"


def text_model(transform: str = "affine", chars_per_token: int = 2, order: str = "alternate", context: int = 6,
               embed_dim: int = 2, std: float = 0.2, **options) -> TarFlow:
    config = FlowConfig(modality="text", vocabulary=VOCABULARY, context=context, chars_per_token=chars_per_token,
                        embed_dim=embed_dim, width=16, head_dim=8, mlp_ratio=2, num_blocks=3, layers_per_block=1,
                        transform=transform, mixture_components=2, order=order, **options)
    torch.manual_seed(0)
    return randomise(TarFlow(config).double(), std=std).eval()


def random_ids(model, batch: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, model.config.context), generator=gen)


# ----- tokenizers and splits ------------------------------------------------------------------------

def test_char_tokenizer_round_trip_on_arbitrary_unicode():
    gen = torch.Generator().manual_seed(0)
    code_points = [c for c in torch.randint(0x20, 0x2FFFF, (2000,), generator=gen).tolist()
                   if not 0xD800 <= c < 0xE000]  # surrogates are not characters
    text = "".join(map(chr, code_points)) + "é\u0301👩‍🔬\n\t"
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) and max(ids) == tokenizer.size - 1
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_round_trips_any_bytes_including_invalid_utf8():
    tokenizer = ByteTokenizer()
    raw = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).tolist())
    raw += b"\xff\xfe\xc3(\xe2\x82"  # never valid UTF-8, and a character cut mid-way
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    ids = tokenizer.encode(raw)
    assert ids == list(raw) and tokenizer.decode_bytes(ids) == raw
    text = "ROMEO: 'tis € 👩‍🔬"
    assert tokenizer.decode(tokenizer.encode(text)) == text and len(tokenizer.encode(text)) == len(text.encode())
    assert tokenizer.decode(tokenizer.encode(b"ok\xff")) == "ok\ufffd"


def test_unknown_character_is_a_clear_error():
    with pytest.raises(InputError, match=r"\['€'\] are not in the model's vocabulary"):
        CharTokenizer(VOCABULARY).encode("ab€")


def test_splits_by_position(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    file = tmp_path / "t.txt"
    file.write_text(text)
    parts = [load_text("text", split, 8, data_dir=str(file)) for split in ("train", "validation", "test")]
    assert [len(part) for part in parts] == [900, 50, 50]
    assert parts[0].tokenizer.decode(torch.cat([p.ids for p in parts]).tolist()) == text
    assert torch.equal(parts[2].windows(8), parts[2].ids[:48].view(6, 8))
    byte_parts = [load_text("text", s, 8, "byte", str(file)) for s in ("train", "validation", "test")]
    assert bytes(torch.cat([p.ids for p in byte_parts]).tolist()) == text.encode()


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"abc" * 100, "too short"),
                                              (b"ok\xff" * 500, "not valid UTF-8")])
def test_bad_text_files(tmp_path, content, message):
    file = tmp_path / "t.txt"
    file.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_text("text", "train", 16, data_dir=str(file))


# ----- the text modality's contract (float64) -------------------------------------------------------

KINDS = [("affine", 1), ("affine", 2), ("mixture", 2), ("mixture-d", 1), ("mixture-d", 2), ("mixture-d", 3),
         ("mixture-d-codebook", 1)]


@pytest.mark.parametrize("transform, chars_per_token", KINDS)
def test_continuous_part_is_exactly_invertible_with_autograd_logdet(transform, chars_per_token):
    codebook = transform == "mixture-d-codebook"
    model = text_model(transform.removesuffix("-codebook"), chars_per_token, mixture_codebook=codebook)
    vectors, _ = model.modality.encode(random_ids(model), torch.Generator().manual_seed(2))
    z, logdet = model(vectors)
    assert z.shape == vectors.shape and (z - vectors).abs().max() > 0.1
    assert (model.inverse(z) - vectors).abs().max() <= 1e-9
    for i in range(len(vectors)):
        J = jacobian(lambda v: model(v.view(1, *vectors.shape[1:]))[0].flatten(), vectors[i].flatten())
        assert abs(torch.linalg.slogdet(J)[1].item() - logdet[i].item()) <= 1e-8


def test_tokens_group_consecutive_characters():
    model = text_model(chars_per_token=3)
    vectors = torch.arange(2 * 6 * 2, dtype=torch.float64).view(2, 6, 2)
    tokens = model.modality.to_tokens(vectors)
    assert tokens.shape == (2, 2, 6)
    assert torch.equal(tokens[:, 1], vectors[:, 3:6].flatten(1))
    assert torch.equal(model.modality.from_tokens(tokens), vectors)


def test_encoder_and_decoder_densities():
    """log q(v | ids) is the Gaussian of each id's codebook entry; p(id | v) is the Bayes posterior over entries."""
    model = text_model()
    modality, ids = model.modality, random_ids(model)
    vectors, log_q = modality.encode(ids, torch.Generator().manual_seed(3))
    scales = modality.log_scales.exp()
    expected = torch.distributions.Normal(modality.means[ids], scales[ids, None]).log_prob(vectors).sum((1, 2))
    assert (log_q - expected).abs().max() <= 1e-12
    each = torch.distributions.Normal(modality.means, scales[:, None]).log_prob(vectors[..., None, :]).sum(-1)
    posterior = each - torch.logsumexp(each, dim=-1, keepdim=True)
    assert (modality.decoder_logits(vectors) - posterior).abs().max() <= 1e-10
    chosen = posterior.gather(-1, ids[..., None]).squeeze(-1).sum(-1)
    assert (modality.decoder_log_prob(vectors, ids) - chosen).abs().max() <= 1e-10


def test_modality_parameters_are_saved(tmp_path):
    model = text_model("mixture-d")
    model.save_pretrained(tmp_path / "m")
    loaded = TarFlow.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.modality.means, model.modality.means)
    assert torch.equal(loaded.modality.log_scales, model.modality.log_scales)
    ids = random_ids(model)
    assert torch.equal(log_likelihood(loaded, ids, torch.Generator().manual_seed(4)),
                       log_likelihood(model, ids, torch.Generator().manual_seed(4)))


def test_a_codebook_tied_block_is_a_discrete_autoregressive_model():
    """mixture_codebook: block 0's components are the codebook's Gaussians. Fresh (every output head zero, so the
    other blocks are the identity) with a separated codebook, the ELBO is sum_t log softmax(b)_{id_t}, b the logits
    block 0 predicts (here its head's bias): a discrete model of the ids, from the first step of training."""
    config = FlowConfig(modality="text", vocabulary=VOCABULARY, context=6, chars_per_token=1, embed_dim=2, width=16,
                        head_dim=8, mlp_ratio=2, num_blocks=3, layers_per_block=1, transform="mixture-d",
                        mixture_components=2, mixture_codebook=True, start_token="learned")
    torch.manual_seed(0)
    model = TarFlow(config).double().eval()
    logits = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        model.modality.means.copy_(torch.tensor([[50.0, 0.0], [0.0, 50.0], [-50.0, -50.0]]))
        model.modality.log_scales.fill_(math.log(0.1))
        model.blocks[0].proj_out.bias[:3] = logits
    ids = random_ids(model, batch=5)
    elbo = log_likelihood(model, ids, torch.Generator().manual_seed(9))
    expected = torch.log_softmax(logits, 0)[ids].sum(1)
    assert torch.allclose(elbo, expected, atol=1e-8), (elbo, expected)
    assert model.blocks[0].transform.components == 3 and model.blocks[1].transform.components == 2


@pytest.mark.parametrize("options", [{"chars_per_token": 2}, {"transform": "affine"}])
def test_mixture_codebook_needs_mix_d_on_single_characters(options):
    settings = dict(modality="text", vocabulary=VOCABULARY, context=6, transform="mixture-d", mixture_codebook=True)
    with pytest.raises(ConfigError, match="mixture_codebook ties block 0's Mix-d components to the text codebook"):
        FlowConfig(**{**settings, **options})


# ----- the bound is a bound --------------------------------------------------------------------------

@pytest.mark.parametrize("transform, chars_per_token, start", [("affine", 1, "zero"), ("mixture-d", 2, "learned")])
def test_elbo_is_below_the_exact_log_likelihood(transform, chars_per_token, start):
    """Vocabulary 3, two characters of one dimension each (two flow tokens, or one of k = 2 with a learned start):
    log p(ids) = log of the integral of p_flow(v) p(ids | v) over R^2, by a Riemann sum on a fine grid. The exact
    probabilities of the 9 sequences sum to 1 (a proper discrete model), and E_q[ELBO] is below each."""
    model = text_model(transform, chars_per_token, context=2, embed_dim=1, std=0.05, start_token=start)
    with torch.no_grad():
        model.modality.means.copy_(torch.tensor([[-1.5], [0.0], [1.5]], dtype=torch.float64))
        model.modality.log_scales.copy_(torch.log(torch.tensor([0.5, 0.7, 0.6], dtype=torch.float64)))
    step = 0.04  # on [-20, 20]^2 the flow's own density integrates to 1 within 1e-12
    axis = torch.arange(-20, 20 + step / 2, step, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis).view(-1, 2, 1)
    with torch.no_grad():
        log_flow = torch.cat([model.log_prob(chunk) for chunk in grid.split(65536)])
        log_decoder = model.modality.decoder_logits(grid)  # (G, 2, V)
    sequences = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    exact = torch.stack([torch.logsumexp(log_flow + log_decoder[:, 0, a] + log_decoder[:, 1, b], 0)
                         for a, b in sequences.tolist()]) + 2 * math.log(step)
    assert abs(torch.logsumexp(exact, 0).item()) <= 1e-6  # sum_ids p(ids) = 1
    draws = 4000
    with torch.no_grad():
        elbo = log_likelihood(model, sequences.repeat(draws, 1), torch.Generator().manual_seed(5)).view(draws, 9)
    mean, stderr = elbo.mean(0), elbo.std(0) / math.sqrt(draws)
    assert (mean <= exact + 4 * stderr).all(), (mean, exact, stderr)
    assert (exact - mean).min() > 0  # a strict gap: q is not the true posterior


# ----- generation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transform, chars_per_token", [("affine", 2), ("mixture-d", 2), ("mixture-d", 3)])
def test_generation_is_the_exact_conditional_of_a_causal_flow(transform, chars_per_token):
    """order=same: the window is F^-1 of [z of the prompt, fresh prior noise], with the prompt kept (3 known
    characters: a partly known token when k = 2)."""
    model = text_model(transform, chars_per_token, order="same")
    known = model.modality.encode(random_ids(model, 1)[:, :3], torch.Generator().manual_seed(6))[0]
    window = flow_window(model, known, 0.9, torch.Generator().manual_seed(7))
    assert torch.equal(window[:, :3], known)
    noise = model.prior.sample((1, 6 // chars_per_token, 2 * chars_per_token), 0.9,
                               torch.Generator().manual_seed(7), torch.float64, torch.device("cpu"))
    z = model.modality.from_tokens(model.flow(model.modality.to_tokens(window))[0])
    assert (z[:, 3:] - model.modality.from_tokens(noise)[:, 3:]).abs().max() <= 1e-9


@pytest.mark.parametrize("architecture", ["flow", "autoregressive"])
def test_generate_keeps_the_prompt(architecture):
    if architecture == "flow":
        model = text_model("mixture-d")
    else:
        config = FlowConfig(modality="text", architecture="autoregressive", vocabulary=VOCABULARY, context=6,
                            width=16, head_dim=8, num_blocks=2, layers_per_block=1)
        model = build_language_model(config).double().eval()
    prompt = torch.tensor([0, 1, 2, 0])
    ids = generate(model, prompt, 9, 0.8, torch.Generator().manual_seed(8))
    assert ids.shape == (13,) and torch.equal(ids[:4], prompt) and int(ids.max()) < 3


# ----- the discrete baseline ---------------------------------------------------------------------------

def test_autoregressive_log_prob_is_causal_and_normalised():
    """log p(ids) = sum_t log p(id_t | id_<t), each term recomputed from the prefix alone; summing over every
    sequence of a 3-character vocabulary and length 3 gives 1."""
    config = FlowConfig(modality="text", architecture="autoregressive", vocabulary=VOCABULARY, context=3, width=16,
                        head_dim=8, num_blocks=2, layers_per_block=1)
    torch.manual_seed(0)
    model = randomise(DiscreteAR(config).double()).eval()
    ids = torch.cartesian_prod(*[torch.arange(3)] * 3)
    with torch.no_grad():
        total = model.log_prob(ids)
        naive = sum(model.logits(ids[:, :t])[:, t].gather(-1, ids[:, t:t + 1]).squeeze(-1) for t in range(3))
    assert (total - naive).abs().max() <= 1e-12
    assert abs(torch.logsumexp(total, 0).item()) <= 1e-12


def test_baseline_has_the_flows_width_depth_and_size():
    from tarflow.presets import get_preset
    from dataclasses import replace

    flow_config = replace(get_preset("shakespeare").model, vocabulary="".join(map(chr, range(32, 97))))
    ar_config = replace(get_preset("shakespeare-ar").model, vocabulary=flow_config.vocabulary)
    flow, baseline = TarFlow(flow_config), DiscreteAR(ar_config)
    assert len(baseline.layers) == sum(len(block.layers) for block in flow.blocks)
    assert baseline.layers[0].mlp.fc1.weight.shape == flow.blocks[0].layers[0].mlp.fc1.weight.shape
    flow_size, baseline_size = (sum(p.numel() for p in m.parameters()) for m in (flow, baseline))
    assert 0.9 <= baseline_size / flow_size <= 1.1, (baseline_size, flow_size)  # 1,619,649 / 1,798,281 (0.90)
