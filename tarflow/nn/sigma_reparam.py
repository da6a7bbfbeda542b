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
        self.reset_sigma()

    @torch.no_grad()
    def reset_sigma(self) -> None:
        """Set u, v to the top singular vectors of the current W and gamma to sigma(W)."""
        w = self.weight
        U, S, Vh = torch.linalg.svd(w.to(torch.promote_types(w.dtype, torch.float32)), full_matrices=False)
        self.u.copy_(U[:, 0])
        self.v.copy_(Vh[0])
        self.gamma.fill_(S[0].item())

    def sigma(self) -> Tensor:
        if self.training:
            with torch.no_grad():
                w = self.weight
                v = F.normalize(w.t() @ self.u.to(w.dtype), dim=0, eps=1e-12)
                u = F.normalize(w @ v, dim=0, eps=1e-12)
                self.u.copy_(u)
                self.v.copy_(v)
        return self.u.to(self.weight.dtype) @ self.weight @ self.v.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * (self.gamma / self.sigma()), self.bias)
