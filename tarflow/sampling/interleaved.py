"""Generation of interleaved words and images by a `Pretzel` model, position by position with one KV cache.

The prompt (word ids from ``<bos>``, each ``<image>`` word with its image or, for the prompt's last word only,
none) fills the cache in one chunk; its given images go through the shallow flow once. Then each row, at each
position: a text position samples the next word (``word_temperature`` 0: the most likely); after an ``<image>``
word come T image positions, each token u = z exp(a) + b with z ~ N(0, temperature^2 I) and (a, b) from the
previous position. A generated token enters the cache as it is (it is never decoded and encoded again); images
are decoded by the shallow inverse for the output only. Rows share positions but not kinds: one row may write a
word where another writes an image token.

With ``noise_std`` > 0 (a model trained on images with gaussian noise of that std) the given images get that noise
before encoding, so they look like training inputs, and every generated image is post-processed by one Tweedie
step, x + sigma^2 grad_x log p(sequence), the model's own score of the finished sequence: that evaluates the
sequence's density once (one pass of all its images through the encoder), after generation, and nothing of it
enters the cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.interleaved import InterleavedBatch
from ..errors import InputError
from ..flows.pretzel import Pretzel
from .denoise import tweedie_correction


@dataclass
class GeneratedSequences:
    """B generated sequences: ``batch`` (an `InterleavedBatch`, which `Pretzel.log_likelihood` reads: ids (-1 at
    image positions and after the end), is_image, images (decoded, and denoised with noise_std > 0; given ones as
    given), image_count, image_starts, lengths (through ``<eos>``, or the whole length when a row did not end);
    image_labels -1 (unknown) and kinds "generated"); given (B, K) (slots given in the prompt), tokens (B, K, T, D)
    (each image's u, as the cache read it) and noise (B, K, T, D) (the z drawn for generated images, zero for given
    ones)."""

    batch: InterleavedBatch
    given: Tensor
    tokens: Tensor
    noise: Tensor


@torch.no_grad()
def generate(model: Pretzel, prompt_ids, prompt_images=None, max_length: int | None = None,
             temperature: float = 1.0, word_temperature: float = 1.0, generator: torch.Generator | None = None,
             noise_std: float = 0.0, batch: int = 1) -> GeneratedSequences:
    """``batch`` continuations of one prompt, up to ``max_length`` positions (default: the model's context).

    ``prompt_ids``: word ids from ``<bos>`` (a list or a 1-D tensor); ``prompt_images``: one entry per ``<image>``
    word of the prompt, an image (C, H, W) in [-1, 1] or None (the model generates it: the last word only)."""
    if model.metadata.get("single_modality") == "text":
        raise InputError("this model is a text-only baseline (trained with single_modality=text): its <image> words "
                         "have no image tokens to generate; generate with the joint model")
    max_length = model.config.context if max_length is None else max_length
    ids, given_images, open_image = check_prompt(model, prompt_ids, prompt_images, max_length)
    prompt = prompt_positions(model, ids, given_images, noise_std, generator)
    image_tokens, token_dim, device = model.image_tokens, model.modality.token_dim, model.device
    out_ids = torch.full((batch, max_length), -1, dtype=torch.long, device=device)
    out_is_image = torch.zeros(batch, max_length, dtype=torch.bool, device=device)
    out_tokens = torch.zeros(batch, max_length, token_dim, dtype=model.dtype, device=device)
    out_noise = torch.zeros_like(out_tokens)
    start = prompt["ids"].shape[1]
    out_ids[:, :start] = prompt["ids"]
    out_is_image[:, :start] = prompt["is_image"]
    out_tokens[:, :start] = prompt["tokens"]
    cache = model.new_cache(batch, max_length)
    index = prompt["image_index"].expand(batch, -1)
    word_log_probs, params = model.step(out_ids[:, :start], out_tokens[:, :start], out_is_image[:, :start], cache, 0,
                                        index)
    word_log_probs, params = word_log_probs[:, -1], tuple(param[:, -1] for param in params)
    remaining = torch.full((batch,), image_tokens if open_image else 0, device=device)  # image positions still to come
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), max_length, device=device)
    for pos in range(start, max_length):
        in_image = remaining > 0
        z = torch.randn((batch, 1, token_dim), generator=generator, dtype=model.dtype).to(device) * temperature
        u = model.transform.inverse(z, tuple(param[:, None] for param in params))[:, 0]
        words = sample_words(model, word_log_probs, word_temperature, generator, image_fits=pos + image_tokens
                             < max_length)
        writing = ~done
        out_is_image[:, pos] = in_image & writing
        out_ids[:, pos] = torch.where(in_image | done, -1, words)
        out_tokens[:, pos] = torch.where(in_image[:, None], u, 0)
        out_noise[:, pos] = torch.where(in_image[:, None], z[:, 0], 0)
        index = image_tokens - remaining
        remaining = torch.where(in_image, remaining - 1, (writing & (words == model.image_word)) * image_tokens)
        ended = writing & ~in_image & (words == model.eos)
        lengths[ended] = pos + 1
        done |= ended
        if bool(done.all()) or pos + 1 == max_length:
            break
        word_log_probs, params = model.step(out_ids[:, pos].clamp_min(0), out_tokens[:, pos], in_image, cache, pos,
                                            index)
    return sequences(model, out_ids, out_is_image, out_tokens, out_noise, lengths, given_images, prompt["noisy"],
                     noise_std)


def check_prompt(model: Pretzel, prompt_ids, prompt_images, max_length: int) -> tuple[list[int], list[Tensor], bool]:
    """(word ids, the given images, whether the prompt ends in an ``<image>`` for the model to generate), or a clear
    `InputError`."""
    ids = [int(i) for i in torch.as_tensor(prompt_ids).reshape(-1).tolist()]
    vocab = len(model.words)
    if not ids or ids[0] != model.bos:
        raise InputError("a prompt starts with <bos> (every sequence does): put it in front")
    if any(not 0 <= i < vocab for i in ids) or model.eos in ids or model.bos in ids[1:]:
        raise InputError(f"prompt ids must be words 0..{vocab - 1}, with <bos> only first and no <eos> (the model "
                         f"ends the sequence), got {ids}")
    markers = [position for position, i in enumerate(ids) if i == model.image_word]
    images = [None] * len(markers) if prompt_images is None else list(prompt_images)
    if len(images) != len(markers):
        raise InputError(f"the prompt has {len(markers)} <image> words but {len(images)} images were given: give one "
                         f"image (or None, for the last word) per <image>")
    for number, (position, image) in enumerate(zip(markers, images)):
        if image is None and position != len(ids) - 1:
            raise InputError(f"the <image> at word {position} of the prompt has no image: only an <image> that ends "
                             f"the prompt is generated by the model; give this one (--image FILE), or end the prompt "
                             f"there")
        if image is not None and (not isinstance(image, Tensor) or image.shape != model.modality.image_shape()):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InputError(f"image {number + 1} of the prompt must be a tensor of shape "
                             f"{model.modality.image_shape()} (C, H, W) in [-1, 1], got {shape}")
    given = [image for image in images if image is not None]
    open_image = len(given) < len(markers)
    needed = len(ids) + model.image_tokens * len(markers)
    if needed >= max_length or max_length > model.config.context:
        raise InputError(f"the prompt takes {needed} positions, with its images: max_length={max_length} must exceed "
                         f"it and be at most the model's context ({model.config.context})")
    return ids, given, open_image


def prompt_positions(model: Pretzel, ids: list[int], given_images: list[Tensor], noise_std: float,
                     generator: torch.Generator | None) -> dict[str, Tensor]:
    """The prompt's positions (1, P): ids, is_image, u tokens (the given images, with noise_std gaussian noise,
    through the shallow flow in one call), index within an image; and the noisy given images (n, C, H, W)."""
    device, dtype, image_tokens = model.device, model.dtype, model.image_tokens
    noisy = torch.zeros(0, *model.modality.image_shape(), dtype=dtype, device=device)
    encoded = noisy.new_zeros(0, image_tokens, model.modality.token_dim)
    if given_images:
        clean = torch.stack([image.to(dtype) for image in given_images])
        noisy = (clean + noise_std * torch.randn(clean.shape, generator=generator, dtype=dtype)).to(device)
        encoded, _ = model.encode_images(noisy)
    positions, is_image, tokens, image_index = [], [], [], []
    given = iter(encoded)
    for word in ids:
        positions.append(word)
        is_image.append(False)
        tokens.append(encoded.new_zeros(1, encoded.shape[-1]))
        image_index.append(torch.zeros(1, dtype=torch.long))
        image = next(given, None) if word == model.image_word else None
        if image is not None:  # None for the open <image> that ends the prompt
            positions += [-1] * image_tokens
            is_image += [True] * image_tokens
            tokens.append(image)
            image_index.append(torch.arange(image_tokens))
    return {"ids": torch.tensor(positions, device=device)[None],
            "is_image": torch.tensor(is_image, device=device)[None], "tokens": torch.cat(tokens)[None],
            "image_index": torch.cat(image_index).to(device)[None], "noisy": noisy}


def sample_words(model: Pretzel, log_probs: Tensor, temperature: float, generator: torch.Generator | None,
                 image_fits: bool) -> Tensor:
    """One word per row (B,) from log p (B, V) at ``temperature`` (0: the most likely); never <bos>, and <image> only
    when its image fits before max_length."""
    banned = [model.bos] if image_fits else [model.bos, model.image_word]
    log_probs = log_probs.clone()
    log_probs[:, banned] = float("-inf")
    if temperature == 0:
        return log_probs.argmax(-1)
    probs = torch.softmax(log_probs.double() / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(log_probs.device)


def sequences(model: Pretzel, ids: Tensor, is_image: Tensor, tokens: Tensor, noise: Tensor, lengths: Tensor,
              given_images: list[Tensor], noisy_given: Tensor, noise_std: float) -> GeneratedSequences:
    """The generated rows cut to the longest, their images collected per row, decoded, and denoised."""
    length = int(lengths.max())
    ids, is_image, tokens, noise = ids[:, :length], is_image[:, :length], tokens[:, :length], noise[:, :length]
    image_tokens, size = model.image_tokens, len(ids)
    starts_of = [[int(s) + 1 for s in (row == model.image_word).nonzero()[:, 0]] for row in ids]
    slots = max(len(starts) for starts in starts_of)
    image_starts = torch.full((size, slots), -1, dtype=torch.long, device=ids.device)
    for row, starts in enumerate(starts_of):
        image_starts[row, :len(starts)] = torch.tensor(starts, dtype=torch.long)
    image_count = (image_starts >= 0).sum(1)
    present = image_starts >= 0
    within = torch.arange(image_tokens, device=ids.device)
    rows = torch.arange(size, device=ids.device)[:, None, None].expand(-1, slots, image_tokens)
    columns = (image_starts.clamp_min(0)[..., None] + within).clamp_max(length - 1)
    image_u = tokens[rows, columns] * present[..., None, None]
    image_z = noise[rows, columns] * present[..., None, None]
    given = (torch.arange(slots, device=ids.device) < len(given_images))[None].expand(size, -1)
    generated = present & ~given
    images = torch.zeros(size, slots, *model.modality.image_shape(), dtype=model.dtype, device=ids.device)
    images[generated] = model.decode_images(image_u[generated])
    images[given] = noisy_given.repeat(size, 1, 1, 1)  # what the model read
    batch = InterleavedBatch(ids, is_image, images, image_count, torch.full_like(image_starts, -1), image_starts,
                             lengths, ["generated"] * size)
    if noise_std > 0:
        correction = tweedie_correction(lambda x: joint_log_prob(model, batch, x), images, noise_std)
        batch.images = images + correction * generated[..., None, None, None]
    if given_images:
        batch.images[given] = torch.stack(given_images).to(images).repeat(size, 1, 1, 1)
    return GeneratedSequences(batch, given, image_u, image_z)


def joint_log_prob(model: Pretzel, batch: InterleavedBatch, images: Tensor) -> Tensor:
    """log p(words, images) of each row (B,) with its images replaced by ``images``."""
    likelihood = model.log_likelihood(dataclasses.replace(batch, images=images))
    return likelihood.text + likelihood.image
