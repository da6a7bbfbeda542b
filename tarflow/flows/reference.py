"""Import checkpoints of the reference TarFlow code (apple/ml-tarflow) into this library's format.

The reference saves a plain ``state_dict`` of its ``Model``; the architecture lives only in the flags it
was trained with. Most of it can be read off the tensor shapes (width, token dimension, tokens, blocks,
layers, MLP ratio, classes, affine or additive); the patch size and channel count are needed to tell the
image size and token layout apart, and the head dimension (64 in the reference code) is not recoverable
from the weights at all.

How the reference definitions map onto ours (each exactly, no approximation):

- Layers: pre-norm ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` with the same fused qkv layout (q, k, v each
  ``heads x head_dim``) and scale 1/sqrt(head_dim): ``attention.norm`` -> ``norm1``,
  ``attention.qkv/proj`` -> ``attn.qkv/proj``, ``mlp.norm`` -> ``norm2``, ``mlp.main.0/2`` -> ``mlp.fc1/fc2``.
- No LayerNorm before the output projection in the reference: ``output_norm="none"`` (the one config
  option added for imports).
- Output split: a (log-scale) then b (shift), as ours; additive (``nvp=False``) blocks output b only.
- Token shift: the reference runs all T tokens and shifts the outputs right by one (token 0 gets
  a = b = 0); ours feeds tokens 0..T-2 and gives tokens 1..T-1 their params: the same function.
- Positions: the reference permutes its positional embedding with the block's token order, so a flipped
  block's position i uses row T-1-i: we store the flipped table.
- Class embedding: reference ``class_embed`` (K, 1, W) added to every token; its unconditional branch
  (label -1 or ``y=None``) uses the mean of the K rows. Ours is an Embedding of K + 1 rows whose last
  row, the null class, is that mean.
- Patches: the reference patchifies with ``unfold`` (token values ordered channel, row, column); ours
  orders them row, column, channel. The input columns of ``proj_in``, the output rows of ``proj_out``
  (for a and for b) and the prior's variance are permuted to match, so images map to the same z.
- Prior: the ``var`` buffer (T, D) is the prior's variance. The reference only learns it for additive
  models (and samples with z * sqrt(var)); it becomes ``prior.log_std = log(var) / 2``. Its loss and
  bits/dim use N(0, I) all the same: imports default to ``likelihood_prior="standard"`` (log p(x) with
  N(0, I), sampling with var), and ``"learned"`` gives the density of N(0, var) instead. For affine
  models it must be all ones (it is, unless the checkpoint was edited).
- Likelihood: the reference returns logdet as a mean over dimensions and its loss is per dimension;
  ours is the per-sample sum. log p(x) agrees: ours / (C H W) equals the reference's per-dimension value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .config import FlowConfig
from .saving import check_state
from .tarflow import TarFlow

STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def load_reference_state(path: str | Path) -> dict[str, Tensor]:
    """Read a reference checkpoint (a torch-saved state_dict, possibly wrapped) as plain tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: give the reference checkpoint file (a torch-saved state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors have many types
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "ema", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict) and not any(k.startswith("blocks.") for k in obj):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors")
    return dict(obj)


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _count(state: dict[str, Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"the checkpoint's {prefix}N entries are not numbered 0..N-1: {sorted(idx)}")
    return len(idx)


def token_permutation(patch_size: int, channels: int) -> Tensor:
    """perm[k] = the reference (unfold) index of our token value k: ours (row, col, channel), theirs
    (channel, row, col)."""
    p, C = patch_size, channels
    return torch.tensor([c * p * p + i * p + j for i in range(p) for j in range(p) for c in range(C)])


def reference_config(state: dict[str, Tensor], patch_size: int, channels: int, head_dim: int = 64,
                     num_classes: int | None = None, image_size: int | None = None,
                     likelihood_prior: str = "standard") -> FlowConfig:
    """The FlowConfig of a reference state_dict (keys already stripped of wrapper prefixes).

    ``image_size`` checks the shape: T = (image_size / patch_size)^2 tokens of D = channels patch_size^2
    values. Without it, a wrong patch_size / channels pair with the same D would import as another shape.
    """
    if "blocks.0.proj_in.weight" not in state:
        some = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"not an apple/ml-tarflow checkpoint: no blocks.0.proj_in.weight (keys: {some}, ...)")
    W, D = state["blocks.0.proj_in.weight"].shape
    T = state["blocks.0.pos_embed"].shape[0]
    if D != channels * patch_size ** 2:
        raise ConfigError(f"the checkpoint's tokens have {D} values, but --patch-size {patch_size} and --channels "
                          f"{channels} give {channels * patch_size ** 2}")
    side = math.isqrt(T)
    if side * side != T:
        raise CheckpointError(f"the checkpoint has {T} tokens, not a square grid")
    if image_size is not None and image_size != side * patch_size:
        raise ConfigError(f"the checkpoint has {T} = {side}x{side} tokens of {D} values: with --patch-size "
                          f"{patch_size} and --channels {channels} that is {side * patch_size}x{side * patch_size} "
                          f"images, not --image-size {image_size}; check the three against the reference's "
                          f"--img_size, --patch_size and --channel_size")
    out_dim = state["blocks.0.proj_out.weight"].shape[0]
    if out_dim not in (D, 2 * D):
        raise CheckpointError(f"blocks.0.proj_out has {out_dim} outputs; expected {2 * D} (affine) or {D} (additive)")
    classes = state["blocks.0.class_embed"].shape[0] if "blocks.0.class_embed" in state else 0
    if num_classes is not None and num_classes != classes:
        raise ConfigError(f"--num-classes {num_classes} given, but the checkpoint has "
                          f"{'no class embedding' if not classes else f'{classes} classes'}")
    if W % head_dim:
        raise ConfigError(f"width {W} is not divisible by --head-dim {head_dim}")
    return FlowConfig(image_size=side * patch_size, channels=channels, patch_size=patch_size, width=W,
                      num_blocks=_count(state, "blocks."), layers_per_block=_count(state, "blocks.0.attn_blocks."),
                      head_dim=head_dim, mlp_ratio=state["blocks.0.attn_blocks.0.mlp.main.0.weight"].shape[0] // W,
                      num_classes=classes, transform="affine" if out_dim == 2 * D else "additive",
                      output_norm="none", likelihood_prior=likelihood_prior)


def convert_reference_state(state: dict[str, Tensor], patch_size: int, channels: int, head_dim: int = 64,
                            num_classes: int | None = None, metadata: dict[str, Any] | None = None,
                            image_size: int | None = None, likelihood_prior: str = "standard") -> TarFlow:
    """A TarFlow whose log_prob and inverse are those of the reference model with ``state``.

    ``likelihood_prior``: "standard" (default) gives log p(x) with N(0, I), the reference's loss and
    bits/dim; "learned" uses the additive model's N(0, var), the prior its samples are drawn from.
    """
    state = _strip(state)
    c = reference_config(state, patch_size, channels, head_dim, num_classes, image_size, likelihood_prior)
    perm = token_permutation(patch_size, channels)
    D = c.token_dim
    new: dict[str, Tensor] = {}
    used = set()

    def take(key: str) -> Tensor:
        if key not in state:
            raise CheckpointError(f"the reference checkpoint lacks {key}")
        used.add(key)
        return state[key]

    for i in range(c.num_blocks):
        src, dst = f"blocks.{i}.", f"blocks.{i}."
        new[dst + "proj_in.weight"] = take(src + "proj_in.weight")[:, perm]
        new[dst + "proj_in.bias"] = take(src + "proj_in.bias")
        pos = take(src + "pos_embed")
        new[dst + "pos_embed"] = pos.flip(0) if i % 2 == 1 else pos
        if c.num_classes:
            emb = take(src + "class_embed")[:, 0, :]
            new[dst + "class_embed.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
        for j in range(c.layers_per_block):
            s, d = f"{src}attn_blocks.{j}.", f"{dst}layers.{j}."
            for a, b in (("attention.norm", "norm1"), ("attention.qkv", "attn.qkv"), ("attention.proj", "attn.proj"),
                         ("mlp.norm", "norm2"), ("mlp.main.0", "mlp.fc1"), ("mlp.main.2", "mlp.fc2")):
                new[f"{d}{b}.weight"] = take(f"{s}{a}.weight")
                new[f"{d}{b}.bias"] = take(f"{s}{a}.bias")
        rows = torch.cat([perm, D + perm]) if c.transform == "affine" else perm
        new[dst + "proj_out.weight"] = take(src + "proj_out.weight")[rows]
        new[dst + "proj_out.bias"] = take(src + "proj_out.bias")[rows]
        used.add(src + "attn_mask")
    var = take("var") if "var" in state else torch.ones(c.num_tokens, D)
    var = var[:, perm]
    if c.transform == "additive":
        if (var <= 0).any():
            raise CheckpointError("the reference prior variance `var` has non-positive entries")
        new["prior.log_std"] = 0.5 * var.log()
    elif (var - 1).abs().max() > 1e-6:
        raise CheckpointError("this affine reference checkpoint has a prior variance `var` other than 1, which the "
                              "reference code never learns for affine models; it cannot be imported faithfully")
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(f"the checkpoint has {len(unused)} tensors the reference layout does not explain "
                              f"(e.g. {unused[:3]}): is it an apple/ml-tarflow TarFlow checkpoint?")
    model = TarFlow(c)
    dtype = state["blocks.0.proj_in.weight"].dtype
    model = model.to(dtype if dtype.is_floating_point else torch.float32)
    expected = model.state_dict()
    check_state(new, expected, "the converted checkpoint")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in new.items()}, strict=True)
    model.metadata = dict(metadata or {})
    return model
