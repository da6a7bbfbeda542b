"""sigma-Reparam linear layer: W_hat = (gamma / sigma(W)) W, against attention-entropy collapse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SigmaReparamLinear(nn.Linear):
    """A linear layer whose weight is rescaled to spectral norm |gamma|: y = x (gamma W / sigma(W))^T + b.

    sigma(W) is estimated by power iteration: one step per training forward updates the unit vectors
    u, v (buffers, no gradient through them); sigma = u^T W v carries the gradient to W. In eval mode
    the stored u, v are used as they are, so inference (KV-cache or Jacobi sampling) is deterministic.
    gamma is a learned scalar initialised to sigma(W_0), so the layer starts as the plain linear layer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("u", torch.zeros(out_features))
        self.register_buffer("v", torch.zeros(in_features))
        self.gamma = nn.Parameter(torch.ones(()))
        self.frozen: tuple[tuple, Tensor] | None = None  # (version key, weight_hat) for inference
        self.reset_sigma()

    @torch.no_grad()
    def reset_sigma(self) -> None:
        """Set u, v to the top singular vectors of the current W and gamma to sigma(W)."""
        w = self.weight
        U, S, Vh = torch.linalg.svd(w.to(torch.promote_types(w.dtype, torch.float32)), full_matrices=False)
        self.u.copy_(U[:, 0])
        self.v.copy_(Vh[0])
        self.gamma.fill_(S[0].item())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Own, aligned copies: a loaded buffer may sit unaligned in a safetensors file's memory, and the
        # matrix-vector products of sigma() round differently there (a last-bit change after save/load).
        for name in ("weight", "u", "v"):
            if prefix + name in state_dict:
                state_dict[prefix + name] = state_dict[prefix + name].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sigma(self) -> Tensor:
        if self.training:
            with torch.no_grad():
                w = self.weight
                v = F.normalize(w.t() @ self.u.to(w.dtype), dim=0, eps=1e-12)
                u = F.normalize(w @ v, dim=0, eps=1e-12)
                self.u.copy_(u)
                self.v.copy_(v)
        return self.u.to(self.weight.dtype) @ self.weight @ self.v.to(self.weight.dtype)

    def weight_hat(self) -> Tensor:
        """The effective weight gamma W / sigma(W) (in training mode this takes a power-iteration step).

        In eval mode without gradients (sampling) it is computed once and reused until W, gamma, u or v
        change (in place, as a load does, or by replacement, as ``.to()`` does), not once per token.
        """
        if self.training or torch.is_grad_enabled():
            return self.weight * (self.gamma / self.sigma())
        key = tuple((t.data_ptr(), t.dtype, t._version) for t in (self.weight, self.gamma, self.u, self.v))
        if self.frozen is None or self.frozen[0] != key:
            self.frozen = (key, self.weight * (self.gamma / self.sigma()))
        return self.frozen[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_hat(), self.bias)


def linear_weight(layer: nn.Linear) -> Tensor:
    """The weight a linear layer applies: W, or gamma W / sigma(W) for a `SigmaReparamLinear`."""
    return layer.weight_hat() if isinstance(layer, SigmaReparamLinear) else layer.weight


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` as one functional call (no module dispatch: sampling makes thousands of small calls); rows
    (N, in) go straight to one addmm, which is what F.linear runs for them and for contiguous 3D input. As in
    `torch.nn.MultiheadAttention`, hooks registered on such a leaf layer do not fire; hooks on a Transformer
    layer do."""
    weight = layer.weight_hat() if type(layer) is SigmaReparamLinear else layer.weight
    bias = layer.bias
    if x.dim() == 2 and bias is not None:
        return torch.addmm(bias, x, weight.t())
    return F.linear(x, weight, bias)


def layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm(x)`` as one functional call."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
