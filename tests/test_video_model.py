"""The contract of video models (STARFlow-V), in float64 on tiny random clips: inverse, log-det against an
autograd Jacobian, KV cache against a naive recompute, video Jacobi against sequential, save/load, causality over
frames, continuation from given frames, and the errors.

Clips of 3 frames of 4x4 grey pixels, patch 2: 4 tokens per frame, 12 tokens of 4 dims, 48 dims per clip. The
"latent" kind models frames through a tiny autoencoder (8x8 grey images -> 1x4x4 latents), so its clips in model space
have the same shape.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from tarflow import ConfigError, FlowConfig, Guidance, InputError, SequentialSampler, TarFlow
from tarflow.flows import Condition
from tarflow.flows.video import FrameLocalBlock
from tarflow.sampling import VideoJacobiSampler, continue_clips, frame_temperatures
from tarflow.sampling.calibrate import calibrate, sampler_from_entry

from conftest import randomise

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE, PATCH, BATCH, CLASSES = 3, 4, 2, 3, 3
TOKENS_PER_FRAME = (SIZE // PATCH) ** 2
KINDS = {
    "global-local": dict(frame_layout="global-local"),
    "global-local-cond-learned-rope": dict(frame_layout="global-local", num_classes=CLASSES, condition_top_only=True,
                                           start_token="learned", positions="rope", layers_per_block=[1, 1, 2]),
    "global-first-cond-factorised": dict(frame_layout="global-first", num_classes=CLASSES, condition_top_only=True,
                                         start_token="learned", positions="factorised", layers_per_block=[2, 1, 1]),
    "causal-cond": dict(frame_layout="causal", num_classes=CLASSES),
    "causal-additive-same": dict(frame_layout="causal", transform="additive", order="same"),
    "global-local-latent": dict(frame_layout="global-local", autoencoder="tiny", latent_scale=2.0, latent_shift=0.25),
    "causal-captioned": dict(frame_layout="causal", num_classes=55, text_encoder="learned", captions="moving-digits",
                             caption_length=6, text_layers=1),
}


def video_config(**options) -> FlowConfig:
    settings = dict(modality="video", frame_count=FRAMES, image_size=SIZE, channels=1, patch_size=PATCH, width=16,
                    head_dim=8, mlp_ratio=2, num_blocks=3, layers_per_block=1)
    return FlowConfig(**{**settings, **options})


@pytest.fixture(params=list(KINDS), scope="module")
def model(request) -> TarFlow:
    options = dict(KINDS[request.param])
    if options.get("autoencoder"):
        options["autoencoder"] = str(request.getfixturevalue("frame_autoencoder_dir"))
    torch.manual_seed(0)
    return randomise(TarFlow(video_config(**options)).double()).eval()


def clips(batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, FRAMES, 1, SIZE, SIZE, generator=gen, dtype=torch.float64) * 2 - 1


def labels(model, batch: int = BATCH):
    return torch.arange(batch) % CLASSES if model.config.num_classes else None


def condition_of(model, y) -> Condition:
    """The blocks' condition of labels ``y``: the labels, or a captioned model's caption ids of them."""
    return Condition(model.conditioning.check(y, BATCH, model.device))


def noise(batch: int = BATCH, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, FRAMES, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)


# ----- layout -----------------------------------------------------------------------------------

def test_tokens_are_frame_major_patches(model):
    x = clips()
    tokens = model.patchify(x)
    assert tokens.shape == (BATCH, FRAMES * TOKENS_PER_FRAME, PATCH * PATCH)
    for frame in range(FRAMES):
        for row in range(SIZE // PATCH):
            for col in range(SIZE // PATCH):
                patch = x[:, frame, 0, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH]
                index = frame * TOKENS_PER_FRAME + row * (SIZE // PATCH) + col
                assert torch.equal(tokens[:, index], patch.reshape(BATCH, -1))
    assert torch.equal(model.unpatchify(tokens), x)


def test_layout_shapes_the_stack(model):
    """global-local: every block but the last within frames, over Tf tokens; global-first: every block but the
    first; causal: every block over all T. The class (condition_top_only) and the caption enter the top block
    over all T."""
    spanning = {"global-local": [2], "global-first": [0]}.get(model.config.frame_layout, [0, 1, 2])
    local = [isinstance(block, FrameLocalBlock) for block in model.blocks]
    assert local == [index not in spanning for index in range(3)]
    for index, block in enumerate(model.blocks):
        tokens = block.num_tokens if index in spanning else block.block.num_tokens
        assert tokens == (FRAMES * TOKENS_PER_FRAME if index in spanning else TOKENS_PER_FRAME)
    inner = [block.block if isinstance(block, FrameLocalBlock) else block for block in model.blocks]
    c = model.config
    captioned = bool(c.text_encoder)
    top = max(spanning)
    conditioned = [bool(c.num_classes) and not captioned and (i == top or not c.condition_top_only) for i in range(3)]
    assert [block.class_embed is not None for block in inner] == conditioned
    assert [block.prefix is not None for block in inner] == [captioned and i == top for i in range(3)]


def test_factorised_positions_share_places_across_frames():
    """positions=factorised: row f Tf + s of the table is frame_embed[f] + pos_embed[s] in the block over the clip;
    a block within frames has Tf learned rows and no frame embedding."""
    torch.manual_seed(0)
    model = TarFlow(video_config(frame_layout="global-first", positions="factorised"))
    spanning, local = model.blocks[0], model.blocks[1].block
    table = spanning.position_table()
    assert table.shape == (FRAMES * TOKENS_PER_FRAME, 16)
    assert torch.equal(table[TOKENS_PER_FRAME + 1], spanning.frame_embed[1] + spanning.pos_embed[1])
    assert local.frame_embed is None and local.position_table().shape == (TOKENS_PER_FRAME, 16)
    with pytest.raises(ConfigError, match="factorised.*video"):
        FlowConfig(positions="factorised")


# ----- invertibility and density ----------------------------------------------------------------

def test_inverse_of_forward_and_forward_of_inverse(model):
    x, y = clips(), labels(model)
    z, _ = model(x, y)
    assert (z - x).abs().max() > 0.1  # the random model really transforms
    assert (model.inverse(z, y) - x).abs().max() <= 1e-9
    z = noise()
    assert (model(model.inverse(z, y), y)[0] - z).abs().max() <= 1e-9


def test_logdet_and_log_prob_match_autograd_jacobian(model):
    x, y = clips(), labels(model)
    z, logdet = model(x, y)
    log_prob = model.log_prob(x, y)
    log_std = torch.zeros(FRAMES * TOKENS_PER_FRAME, PATCH * PATCH, dtype=torch.float64)
    if model.prior_std() is not None:
        log_std = model.prior.log_std
    for i in range(BATCH):
        y_i = None if y is None else y[i:i + 1]
        J = jacobian(lambda v: model(v.view(1, *x.shape[1:]), y_i)[0].flatten(), x[i].flatten(), vectorize=True)
        _, logabsdet = torch.linalg.slogdet(J)
        assert abs(logabsdet.item() - logdet[i].item()) <= 1e-8
        tokens = model.patchify(z[i:i + 1])[0]
        prior = (-0.5 * (tokens / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum()
        assert abs(log_prob[i].item() - (prior + logabsdet).item()) <= 1e-8


def test_clips_of_a_batch_do_not_mix(model):
    x, y = clips(), labels(model)
    z, logdet = model(x, y)
    for i in range(BATCH):
        z_i, logdet_i = model(x[i:i + 1], None if y is None else y[i:i + 1])
        assert (z_i - z[i:i + 1]).abs().max() <= 1e-12 and abs(logdet_i.item() - logdet[i].item()) <= 1e-12


# ----- causality --------------------------------------------------------------------------------

@pytest.mark.parametrize("frame", range(FRAMES))
def test_flow_is_causal_over_frames(model, frame):
    """Changing frame f changes z of frames >= f only (and does change frame f)."""
    x, y = clips(), labels(model)
    moved = x.clone()
    moved[:, frame] += 0.3
    z, z_moved = model(x, y)[0], model(moved, y)[0]
    assert torch.equal(z[:, :frame], z_moved[:, :frame])
    assert (z[:, frame] - z_moved[:, frame]).abs().max() > 1e-3


@pytest.mark.parametrize("frame", range(FRAMES))
def test_local_blocks_do_not_mix_frames_and_the_global_block_does(model, frame):
    tokens, y = model.patchify(clips()), labels(model)
    condition = condition_of(model, y)
    moved = tokens.clone()
    moved[:, frame * TOKENS_PER_FRAME:(frame + 1) * TOKENS_PER_FRAME] += 0.3
    per_frame = (FRAMES, TOKENS_PER_FRAME)
    for block in model.blocks:
        change = (block(tokens, condition)[0] - block(moved, condition)[0]).abs()
        change = change.view(BATCH, *per_frame, -1).amax(dim=(0, 2, 3))  # per output frame
        others = [f for f in range(FRAMES) if f != frame]
        if isinstance(block, FrameLocalBlock):
            assert change[others].max() <= 1e-12
        else:
            assert frame == 0 or change[:frame].max() <= 1e-12
            if frame < FRAMES - 1:
                assert change[frame + 1:].min() > 1e-4  # later frames read it
        assert change[frame] > 0.2  # at least the moved tokens themselves


# ----- the KV cache and the samplers ------------------------------------------------------------

def test_a_first_frame_temperature_scales_the_first_frames_noise_only(model):
    sampler = SequentialSampler(model)
    base = sampler.noise(BATCH, 1.0, torch.Generator().manual_seed(3))
    scaled = sampler.noise(BATCH, frame_temperatures(model, 0.8, 0.3), torch.Generator().manual_seed(3))
    assert torch.allclose(scaled[:, 0], 0.3 * base[:, 0]) and torch.allclose(scaled[:, 1:], 0.8 * base[:, 1:])
    assert frame_temperatures(model, 0.8) == 0.8  # no first frame's: one temperature, as for images
    with pytest.raises(ConfigError, match="needs a video model"):
        frame_temperatures(TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, head_dim=8)), 1.0, 0.5)


def inner_blocks(model):
    return [block.block if isinstance(block, FrameLocalBlock) else block for block in model.blocks]


def test_kv_cache_steps_match_uncached_pass(model):
    tokens, y = model.patchify(clips()), labels(model)
    for block, outer in zip(inner_blocks(model), model.blocks):
        condition = condition_of(model, y)
        x = block.order.apply(tokens)
        if isinstance(outer, FrameLocalBlock):
            x, condition = outer.fold(x), outer.fold_condition(condition)
        inputs = block.inputs(x, block.first, x.shape[1])
        full = block.step(inputs, condition)
        cache = block.new_cache(condition, x.shape[0])
        steps = [block.step(inputs[:, p:p + 1], condition, cache, p) for p in range(inputs.shape[1])]
        assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-12


def naive_block_inverse(block, z, condition):
    """Token by token in block order, each token's params from an uncached pass over the whole sequence (tokens
    not yet solved hold z: the causal mask must hide them); a block within frames on its folded frames."""
    if isinstance(block, FrameLocalBlock):
        return block.unfold(naive_block_inverse(block.block, block.fold(z), block.fold_condition(condition)))
    z = block.order.apply(z)
    x = z.clone()
    first, num_tokens = block.first, z.shape[1]
    for t in range(first, num_tokens):
        params = block.params(block.inputs(x, first, num_tokens), condition)
        x[:, t:t + 1] = block.transform.inverse(z[:, t:t + 1], tuple(p[:, t - first:t - first + 1] for p in params))
    return block.order.undo(x)


def naive_inverse(model, z, y):
    tokens, condition = model.patchify(z), condition_of(model, y)
    with torch.no_grad():
        for block in reversed(model.blocks):
            tokens = naive_block_inverse(block, tokens, condition)
    return model.unpatchify(tokens)


def test_kv_cache_inverse_matches_naive_inverse(model):
    z, y = noise(), labels(model)
    reference = naive_inverse(model, z, y)
    assert (model(reference, y)[0] - z).abs().max() <= 1e-9  # the reference is an inverse
    assert (model.inverse(z, y) - reference).abs().max() <= 1e-9
    assert (SequentialSampler(model).sample(BATCH, y, z=z) - reference).abs().max() <= 1e-9


def guidance_for(model):
    return Guidance(1.5, attn_temp=1.3) if model.config.num_classes else None


@pytest.mark.parametrize("guided", [False, True])
def test_video_jacobi_matches_sequential(model, guided):
    z, y = noise(), labels(model)
    guidance = guidance_for(model) if guided else None
    sequential = SequentialSampler(model).sample(BATCH, y, guidance=guidance, z=z)
    exact = VideoJacobiSampler(model, tol=0.0)
    assert (exact.sample(BATCH, y, guidance=guidance, z=z) - sequential).abs().max() <= 1e-9
    local = [isinstance(block, FrameLocalBlock) for block in model.blocks]
    for is_local, iterations in zip(local, exact.last_iterations):  # one module per frame, or every frame at once
        first = 1 if model.config.start_token == "zero" else 0
        expected = [TOKENS_PER_FRAME - first] if is_local else [TOKENS_PER_FRAME - first] + [TOKENS_PER_FRAME] * 2
        assert iterations == expected
    early = VideoJacobiSampler(model)  # the default tolerance stops early
    assert (early.sample(BATCH, y, guidance=guidance, z=z) - sequential).abs().max() <= 1e-3


def test_calibration_counts_a_frame_local_block_by_its_frames(model):
    lines = []
    entry = calibrate(model, 2, log=lines.append)
    for index, block in enumerate(model.blocks):
        tried = sorted(int(line.split()[2]) for line in lines if line.startswith(f"block {index}: "))
        if isinstance(block, FrameLocalBlock):  # 4 tokens a frame: Jacobi only (a split of 3 unknowns is too short)
            assert tried == [1]
        else:  # 12 tokens: the usual splits, and one module per frame
            assert FRAMES in tried and tried == sorted(set(tried)) and max(tried) <= (TOKENS_PER_FRAME * FRAMES - 1) // 2
    z, y = noise(2), labels(model, 2)
    reference = SequentialSampler(model).sample(2, y, z=z)
    assert (sampler_from_entry(model, entry).sample(2, y, z=z) - reference).abs().max() <= 1e-3


# ----- continuation -----------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("sampler_kind", ["sequential", "video-jacobi"])
def test_continuation_reproduces_given_frames_and_samples_the_rest(model, count, sampler_kind):
    y = labels(model)
    sampler = SequentialSampler(model) if sampler_kind == "sequential" else VideoJacobiSampler(model, tol=0.0)
    given = clips(seed=5)[:, :count]
    for guidance in (None, guidance_for(model)):
        out = continue_clips(sampler, given, y, guidance=guidance, generator=torch.Generator().manual_seed(7))
        assert out.shape == (BATCH, FRAMES, 1, SIZE, SIZE)
        assert (out[:, :count] - given).abs().max() <= 1e-9
    # the later frames' z is the prior noise drawn with the same generator (unguided: the model's own forward)
    out = continue_clips(sampler, given, y, generator=torch.Generator().manual_seed(7))
    drawn = sampler.noise(BATCH, generator=torch.Generator().manual_seed(7))
    assert (model(out, y)[0][:, count:] - drawn[:, count:]).abs().max() <= 1e-9
    # and the continuation depends on the given frames
    other = continue_clips(sampler, given + 0.2, y, generator=torch.Generator().manual_seed(7))
    assert (other[:, count:] - out[:, count:]).abs().max() > 1e-3


class Halving:
    """A stand-in score denoiser: x -> x / 2."""

    def denoise(self, clips: torch.Tensor) -> torch.Tensor:
        return clips / 2


def test_continuation_for_a_model_of_noisy_frames_noises_the_given_frames_then_denoises(model):
    """noise_std: the given frames get the training noise (the first draws of the generator) before they are
    encoded, and the continued clip is denoised by one Tweedie step, or by the denoiser when one is given."""
    from tarflow.sampling import tweedie_denoise

    sigma, y, given = 0.3, labels(model), clips(seed=5)[:, :2]
    sampler = SequentialSampler(model)
    generator = torch.Generator().manual_seed(7)
    noisy = given + sigma * torch.randn(given.shape, generator=generator, dtype=torch.float64)
    plain = continue_clips(sampler, noisy, y, generator=generator)
    denoised = continue_clips(sampler, given, y, generator=torch.Generator().manual_seed(7), noise_std=sigma)
    assert (denoised - tweedie_denoise(model, plain, y, sigma)).abs().max() <= 1e-9
    assert (denoised - plain).abs().max() > 1e-3  # the Tweedie step moved it
    halved = continue_clips(sampler, given, y, generator=torch.Generator().manual_seed(7), noise_std=sigma,
                            denoiser=Halving())
    assert (halved - plain / 2).abs().max() <= 1e-12
    with pytest.raises(ConfigError, match="give the model's noise_std"):
        continue_clips(sampler, given, y, denoiser=Halving())


# ----- save / load ------------------------------------------------------------------------------

def test_save_load_round_trip(model, tmp_path):
    x, y = clips(), labels(model)
    loaded = TarFlow.from_pretrained(model.save_pretrained(tmp_path / "video"))
    assert loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the loaded weights are not 64-byte aligned (memory-mapped), so float64 sums may round differently
    assert (loaded.log_prob(x, y) - model.log_prob(x, y)).abs().max() <= 1e-10


# ----- errors -----------------------------------------------------------------------------------

def test_clips_of_the_wrong_shape_are_refused():
    model = TarFlow(video_config())
    good = torch.zeros(2, FRAMES, 1, SIZE, SIZE)
    for bad, message in [(good[:, 0], "batch of clips"), (good[:, :2], "2 frames but the model expects 3"),
                         (good.expand(-1, -1, 3, -1, -1), "3 channels but the model expects 1"),
                         (good[..., :2], "frames of 2x4 pixels but the model expects 4x4")]:
        with pytest.raises(InputError, match=message):
            model.log_prob(bad)


def test_continuation_errors():
    model = TarFlow(video_config())
    sampler = SequentialSampler(model)
    good = torch.zeros(2, FRAMES, 1, SIZE, SIZE)
    for bad, message in [(good, "3 first frames but the model makes clips of 3"),
                         (good[:, :0], "0 first frames"),
                         (good[:, :1, 0], "first frames must be clips"),
                         (good[:, :1].expand(-1, -1, 3, -1, -1), "3 channels but the model expects 1"),
                         (good[:, :1, :, :2], "frames of 4x2 pixels but the model expects 4x4")]:
        with pytest.raises(InputError, match=message):
            continue_clips(sampler, bad)
    image_model = TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, head_dim=8, num_blocks=1))
    with pytest.raises(ConfigError, match="needs a video model"):
        VideoJacobiSampler(image_model)
    with pytest.raises(ConfigError, match="needs a video model"):
        continue_clips(SequentialSampler(image_model), good[:, :1])


def test_config_errors():
    with pytest.raises(ConfigError, match="frame_count must be at least 1"):
        video_config(frame_count=0)
    with pytest.raises(ConfigError, match="frame_layout"):
        video_config(frame_layout="local")
    with pytest.raises(ConfigError, match="video models are flows"):
        video_config(architecture="ntm")


# ----- likelihood per frame ---------------------------------------------------------------------

def test_frame_log_prob_sums_to_log_prob_and_matches_jacobian_blocks(model):
    """log p(x_f | x_<f) = log p_prior(z_f) + log|det| of the frame's diagonal block of the autograd Jacobian."""
    from tarflow.metrics.video import frame_log_prob

    x, y = clips(), labels(model)
    per_frame = frame_log_prob(model, x, y)
    assert per_frame.shape == (BATCH, FRAMES)
    assert (per_frame.sum(1) - model.log_prob(x, y)).abs().max() <= 1e-10
    z, _ = model(x, y)
    dims = SIZE * SIZE
    log_std = model.prior.log_std.view(FRAMES, -1) if model.prior_std() is not None else torch.zeros(FRAMES, dims)
    for i in range(BATCH):
        y_i = None if y is None else y[i:i + 1]
        J = jacobian(lambda v: model(v.view(1, *x.shape[1:]), y_i)[0].flatten(), x[i].flatten(), vectorize=True)
        for frame in range(FRAMES):
            rows = slice(frame * dims, (frame + 1) * dims)
            _, logabsdet = torch.linalg.slogdet(J[rows, rows])
            tokens = model.patchify(z[i:i + 1])[0, frame * TOKENS_PER_FRAME:(frame + 1) * TOKENS_PER_FRAME]
            s = log_std[frame].view(TOKENS_PER_FRAME, -1)
            prior = (-0.5 * (tokens / s.exp()) ** 2 - s - 0.5 * math.log(2 * math.pi)).sum()
            assert abs(per_frame[i, frame].item() - (prior + logabsdet).item()) <= 1e-8


def test_frame_bits_per_dim_average_to_bits_per_dim(model):
    from tarflow.metrics import evaluate_bpd
    from tarflow.metrics.video import evaluate_frame_bpd

    gen = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 256, (5, FRAMES, 1, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    y = None if not model.config.num_classes else torch.arange(5) % CLASSES
    per_frame = evaluate_frame_bpd(model, levels, y, 256, batch_size=2)
    assert len(per_frame) == FRAMES
    assert abs(sum(per_frame) / FRAMES - evaluate_bpd(model, levels, y, 256)["bits_per_dim"]) <= 1e-9


def test_video_fields_on_other_modalities_are_refused():
    with pytest.raises(ConfigError, match="apply to modality=video"):
        FlowConfig(frame_count=4)
    with pytest.raises(ConfigError, match="apply to modality=video"):
        FlowConfig(frame_layout="causal")
    with pytest.raises(ConfigError, match="autoencoder applies to modality=latents or video, not 'text'"):
        FlowConfig(modality="text", autoencoder="somewhere")


# ----- frames through an autoencoder ---------------------------------------------------------------

def test_latent_frames_are_each_frame_encoded_and_decoded_alone(frame_autoencoder_dir):
    from tarflow.autoencoders import load_autoencoder

    model = TarFlow(video_config(**{**KINDS["global-local-latent"], "autoencoder": str(frame_autoencoder_dir)}))
    model = model.double()
    autoencoder = load_autoencoder(frame_autoencoder_dir).double()
    assert model.config.latent and model.modality.latent and model.modality.image_shape() == (1, 8, 8)
    images = torch.rand(2, FRAMES, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    latents = model.modality.from_frames(images)
    assert latents.shape == (2, FRAMES, 1, SIZE, SIZE)
    for frame in range(FRAMES):
        expected = (autoencoder.encode(images[:, frame]) - 0.25) * 2.0
        assert torch.allclose(latents[:, frame], expected, rtol=0, atol=1e-6)  # the autoencoder runs in float32
        decoded = autoencoder.decode(latents[:, frame] / 2.0 + 0.25)
        assert torch.allclose(model.modality.to_frames(latents)[:, frame], decoded, rtol=0, atol=1e-6)
    assert model.log_prob(latents).shape == (2,)
    with pytest.raises(InputError, match="frames of 8x8 latents but the model expects 4x4"):
        model.log_prob(images)  # images, not their latents
    pixels = TarFlow(video_config())
    assert not pixels.config.latent and torch.equal(pixels.modality.to_frames(images), images)


def test_global_first_takes_the_caption_in_its_first_block():
    model = TarFlow(video_config(frame_layout="global-first", num_classes=55, text_encoder="learned",
                                 captions="moving-digits", caption_length=6, text_layers=1))
    assert model.blocks[0].prefix is not None
    assert all(block.block.prefix is None for block in model.blocks[1:])
