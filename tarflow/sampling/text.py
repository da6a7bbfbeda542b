"""Text generation: TarFlowLM windows conditioned on the vectors of a prompt, and the discrete baseline.

The flow generates a window of ``context`` characters at a time, in N passes (one per block, last block first,
each in its own direction: the hierarchical multi-pass generation of TarFlowLM), then decodes each vector by
p(id | v). The window's first characters are known (the prompt's vectors, v ~ q(v | ids), then the previous
window's last vectors); the known values are held fixed in every pass where they are known:

    level 0 = the data; level i + 1 = the output of block i. Level i's known prefix is known exactly when blocks
    0 .. i-1 all read the sequence in its own order (identity order: z_t depends on x_<=t only).

When every block has the identity order (``order=same``) this is exact sampling from p(v_rest | v_known) (the
flow is then triangular, and the known z are those of the prompt). With alternating orders only the levels below
the first flipped block are held, so the continuation is conditioned on the prompt through those passes: an
approximation (the exact conditional of a bidirectional flow is not available in closed form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..flows.conditioning import Condition
from ..flows.language import DiscreteAR
from ..flows.tarflow import TarFlow


def is_identity(order, num_tokens: int) -> bool:
    """Whether a block reads the sequence in its own order (then its z_t depends on x_<=t only)."""
    probe = torch.arange(num_tokens).view(1, -1, 1)
    return torch.equal(order.apply(probe), probe)


def known_runs(mask: Tensor) -> tuple[int, int]:
    """(tokens fully known at the start, at the end) of a (T, D) mask."""
    full = mask.all(-1).tolist()
    leading = next((t for t, known in enumerate(full) if not known), len(full))
    trailing = next((t for t, known in enumerate(reversed(full)) if not known), len(full))
    return leading, trailing


@torch.no_grad()
def inverse_with_known(block, z: Tensor, known: Tensor, mask: Tensor, condition: Condition) -> Tensor:
    """A block's inverse (z (1, T, D) -> x) with x fixed to ``known`` where ``mask`` (T, D) is set.

    A partly known token: its known values are mapped forward to their z, then the token is inverted with
    them, which gives the unknown values their exact conditional (transforms are triangular within a token)."""
    z, known, mask = block.order.apply(z), block.order.apply(known), block.order.apply(mask[None])[0]
    num_tokens, first = z.shape[1], block.first
    x = torch.where(mask, known, z)  # tokens before `first` pass unchanged
    start, trailing = known_runs(mask)
    start = max(start, first)
    cache = block.new_cache(condition, 1)
    if start > first:  # the known prefix in one chunk: it fills the KV cache
        block.step(block.inputs(x, first, start), condition, cache, 0)
    for token in range(start, num_tokens - trailing):
        previous = x[:, token - 1:token] if token else torch.zeros_like(x[:, :1])
        params = block.params(previous, condition, cache, token - first)
        value = block.transform.inverse(z[:, token:token + 1], params)
        here = mask[token]
        if here.any() and not here.all():
            value = torch.where(here, known[:, token:token + 1], value)
            z_known = block.transform.forward(value, params)[0]
            value = block.transform.inverse(torch.where(here, z_known, z[:, token:token + 1]), params)
        x[:, token:token + 1] = torch.where(here, known[:, token:token + 1], value)
    return block.order.undo(x)


@torch.no_grad()
def flow_window(model: TarFlow, known: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """One window of vectors (1, L, e) whose first ``known.shape[1]`` vectors are ``known`` (see the module doc)."""
    modality, condition = model.modality, Condition()
    data = torch.zeros(1, modality.context, modality.embed_dim, dtype=model.dtype, device=model.device)
    data[:, :known.shape[1]] = known
    mask = torch.zeros_like(data, dtype=torch.bool)
    mask[:, :known.shape[1]] = True
    levels, tokens, token_mask = [], modality.to_tokens(data), modality.to_tokens(mask)[0]
    for block in model.blocks:
        levels.append(tokens)
        if tokens is not None and is_identity(block.order, modality.num_tokens):
            tokens = block(tokens, condition)[0]
        else:
            tokens = None
    z = model.prior.sample((1, modality.num_tokens, modality.token_dim), temperature, generator, model.dtype,
                           model.device)
    for block, level in zip(reversed(model.blocks), reversed(levels)):
        if level is None:
            z = block.inverse(z, condition)
        else:
            z = inverse_with_known(block, z, level, token_mask, condition)
    return modality.from_tokens(z)


@torch.no_grad()
def generate_flow(model: TarFlow, prompt: Tensor, length: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """``prompt`` ids (P,) followed by ``length`` generated ids, (P + length,).

    Windows of ``context`` characters: the first holds the prompt's last characters (at most half the window);
    each next one keeps the previous window's last half as known vectors and generates the other half."""
    generator = generator or torch.Generator().manual_seed(0)
    modality = model.modality
    keep = modality.context // 2
    ids = prompt.to(model.device)
    vectors = modality.encode(prompt[None].to(model.device), generator)[0][0].to(model.dtype)
    target = len(prompt) + length
    while len(ids) < target:
        known = vectors[len(vectors) - min(len(vectors), keep):] if len(vectors) else vectors
        window = flow_window(model, known[None], temperature, generator)[0]
        if not torch.isfinite(window).all():
            raise InputError(f"the generated vectors overflow at temperature {temperature:g}: use a temperature "
                             f"near 1 (the prior noise is scaled by it)")
        new = window[len(known):]
        vectors = torch.cat([vectors, new])
        ids = torch.cat([ids, modality.decode(new[None], generator)[0]])
    return ids[:target]


@torch.no_grad()
def generate_autoregressive(model: DiscreteAR, prompt: Tensor, length: int, temperature: float = 1.0,
                            generator: torch.Generator | None = None) -> Tensor:
    """``prompt`` ids (P,) then ``length`` ids drawn from softmax(logits / temperature), reading at most
    context - 1 previous ids."""
    generator = generator or torch.Generator().manual_seed(0)
    ids = prompt.to(model.device)
    for _ in range(length):
        recent = ids[max(0, len(ids) - model.config.context + 1):]
        logits = model.logits(recent[None])[0, -1] / temperature
        probabilities = torch.softmax(logits.double(), -1).cpu()
        ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator).to(ids.device)])
    return ids


def generate(model, prompt: Tensor, length: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Either language model: prompt ids (P,) -> (P + length,) ids."""
    if isinstance(model, DiscreteAR):
        return generate_autoregressive(model, prompt, length, temperature, generator)
    return generate_flow(model, prompt, length, temperature, generator)
