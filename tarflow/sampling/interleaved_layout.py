"""Batched generation by a `Pretzel` model when every row has the same layout: the task metrics
(`tarflow.metrics.interleaved`) and the generation benchmark.

- `generate_template`: the words are forced (a template such as "a seven : <image> and a two : <image>"), every
  ``<image>`` is followed by T generated tokens; one KV cache, one position per step, so a template of n segments
  is generated in stages in one pass: words up to an image, the image, the forced words after it, the next image.
- `greedy_words`: given images (B rows of n images each, for a prompt such as "<image> plus <image> is"), the most
  likely words after the prompt until ``<eos>``: captioning and arithmetic answers, one batched pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..flows.pretzel import Pretzel
from .interleaved import GeneratedSequences, sample_words, sequences


def layout(model: Pretzel, words: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Positions of a word sequence with T image positions after each ``<image>``: ids (L,) (-1 at image
    positions), is_image (L,), index within the image (L,)."""
    ids, is_image, index = [], [], []
    for word in words:
        ids.append(word)
        is_image.append(False)
        index.append(0)
        if word == model.image_word:
            ids += [-1] * model.image_tokens
            is_image += [True] * model.image_tokens
            index += list(range(model.image_tokens))
    device = model.device
    return (torch.tensor(ids, device=device), torch.tensor(is_image, device=device),
            torch.tensor(index, device=device))


@torch.no_grad()
def generate_template(model: Pretzel, words: list[int], batch: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None, noise_std: float = 0.0) -> GeneratedSequences:
    """``batch`` rows of the template ``words`` (ids from ``<bos>``; ``<eos>`` last if wanted), the words forced and
    each image's tokens drawn, u = z exp(a) + b with z ~ N(0, temperature^2 I). Images as `generate` returns them
    (decoded; one Tweedie step when ``noise_std`` > 0)."""
    ids, is_image, index = (part.expand(batch, -1) for part in layout(model, words))
    length, token_dim = ids.shape[1], model.modality.token_dim
    tokens = torch.zeros(batch, length, token_dim, dtype=model.dtype, device=model.device)
    noise = torch.zeros_like(tokens)
    cache = model.new_cache(batch, length)
    params = None
    for pos in range(length):
        if bool(is_image[0, pos]):
            z = torch.randn((batch, 1, token_dim), generator=generator, dtype=model.dtype).to(model.device)
            z = z * temperature
            tokens[:, pos] = model.transform.inverse(z, tuple(param[:, None] for param in params))[:, 0]
            noise[:, pos] = z[:, 0]
        if pos + 1 < length:
            _, params = model.step(ids[:, pos].clamp_min(0), tokens[:, pos], is_image[:, pos], cache, pos,
                                   index[:, pos])
    lengths = torch.full((batch,), length, device=model.device)
    no_images = tokens.new_zeros(0, *model.modality.image_shape())
    return sequences(model, ids.clone(), is_image.clone(), tokens, noise, lengths, [], no_images, noise_std)


@torch.no_grad()
def greedy_words(model: Pretzel, prompt: list[int], images: Tensor, max_words: int = 8, noise_std: float = 0.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """The most likely words after ``prompt`` (ids from ``<bos>``, n ``<image>`` words) with row b's images
    ``images[b]`` (B, n, C, H, W) in [-1, 1] (gaussian noise of ``noise_std`` added, as in training): (B, max_words)
    word ids up to and including ``<eos>``, -1 after it. Never ``<bos>`` or ``<image>``."""
    batch, count = images.shape[:2]
    ids, is_image, index = (part.expand(batch, -1) for part in layout(model, prompt))
    noisy = images.to(model.device, model.dtype)
    noisy = noisy + noise_std * torch.randn(noisy.shape, generator=generator, dtype=model.dtype).to(model.device)
    encoded, _ = model.encode_images(noisy.flatten(0, 1))
    tokens = encoded.new_zeros(batch, ids.shape[1], encoded.shape[-1])
    tokens[is_image] = encoded.reshape(batch, count * model.image_tokens, -1).flatten(0, 1)
    start = ids.shape[1]
    cache = model.new_cache(batch, start + max_words)
    log_probs, _ = model.step(ids.clamp_min(0), tokens, is_image, cache, 0, index)
    log_probs = log_probs[:, -1]
    out = torch.full((batch, max_words), -1, dtype=torch.long, device=model.device)
    done = torch.zeros(batch, dtype=torch.bool, device=model.device)
    no_token = tokens.new_zeros(batch, tokens.shape[-1])
    no_image = torch.zeros(batch, dtype=torch.bool, device=model.device)
    for step in range(max_words):
        words = sample_words(model, log_probs, 0, None, image_fits=False)
        out[:, step] = torch.where(done, -1, words)
        done |= words == model.eos
        if bool(done.all()) or step + 1 == max_words:
            break
        log_probs, _ = model.step(words, no_token, no_image, cache, start + step, torch.zeros_like(words))
    return out
