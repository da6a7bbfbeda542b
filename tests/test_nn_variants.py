"""Building blocks of the Transformer variants: AFT against a naive loop, sigma-Reparam against SVD."""

import pytest
import torch

from tarflow.nn import KVCache
from tarflow.nn.aft import VARIANTS, CausalAFT
from tarflow.nn.sigma_reparam import SigmaReparamLinear

T, W, B, WINDOW = 6, 8, 3, 3


def naive_aft(m: CausalAFT, h, tau):
    """Y_t = sigmoid(Q_t) sum_{s<=t} exp((K_s + w_ts)/tau) V_s / sum_{s<=t} exp((K_s + w_ts)/tau), by loops."""
    q, k, v = m.qkv(h).chunk(3, -1)
    out = torch.zeros_like(q)
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            num, den = torch.zeros_like(q[0, 0]), torch.zeros_like(q[0, 0])
            for s in range(t + 1):
                lag = t - s
                w = 0.0  # simple, and outside the window of local and conv
                if m.variant == "full" or m.variant == "local" and lag < WINDOW:
                    w = m.pos_bias[t, s]
                elif m.variant == "conv" and lag < WINDOW:
                    w = m.pos_bias[lag]
                e = torch.exp((k[b, s] + w) / tau[b])
                num, den = num + e * v[b, s], den + e
            out[b, t] = torch.sigmoid(q[b, t]) * num / den
    return m.proj(out)


@pytest.fixture(params=VARIANTS)
def aft(request):
    torch.manual_seed(0)
    m = CausalAFT(W, T, request.param, window=WINDOW).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def test_aft_matches_naive_definition(aft):
    h = torch.randn(B, T, W, dtype=torch.float64)
    tau = torch.tensor([1.0, 1.5, 0.7], dtype=torch.float64)
    assert (aft(h, tau) - naive_aft(aft, h, tau)).abs().max() < 1e-12
    assert (aft(h) - naive_aft(aft, h, torch.ones(B, dtype=torch.float64))).abs().max() < 1e-12


@pytest.mark.parametrize("chunks", [[1] * T, [2, 3, 1], [T]])
def test_aft_cached_steps_match_parallel(aft, chunks):
    h = torch.randn(B, T, W, dtype=torch.float64)
    cache = KVCache(1, B, aft.heads, T, aft.head_dim, torch.float64, torch.device("cpu"))
    outs, pos = [], 0
    for L in chunks:
        outs.append(aft(h[:, pos:pos + L], None, cache.layer(0), pos))
        pos += L
    assert (torch.cat(outs, 1) - aft(h)).abs().max() < 1e-12


def test_aft_is_causal(aft):
    h = torch.randn(B, T, W, dtype=torch.float64)
    h2 = h.clone()
    h2[:, 4:] += 1.0
    assert (aft(h)[:, :4] - aft(h2)[:, :4]).abs().max() < 1e-13  # the max shift rounds, nothing more
    assert (aft(h)[:, 4:] - aft(h2)[:, 4:]).abs().max() > 1e-3


def test_sigma_reparam_starts_as_the_plain_layer():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(8, 5).double().eval()
    layer.reset_sigma()  # u, v and gamma in float64
    x = torch.randn(3, 8, dtype=torch.float64)
    assert (layer(x) - torch.nn.functional.linear(x, layer.weight, layer.bias)).abs().max() < 1e-12


def test_sigma_reparam_power_iteration_converges_to_the_spectral_norm():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(8, 5).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 8, dtype=torch.float64) * 3)  # move W away from the stored u, v
    x = torch.randn(3, 8, dtype=torch.float64)
    for _ in range(50):
        layer(x)  # one power-iteration step per training forward
    spectral = torch.linalg.matrix_norm(layer.weight, 2)
    assert abs(layer.sigma().item() - spectral.item()) < 1e-9
    w_hat = layer.weight * layer.gamma / layer.sigma()
    assert abs(torch.linalg.matrix_norm(w_hat, 2).item() - abs(layer.gamma.item())) < 1e-9


def test_sigma_reparam_eval_uses_the_stored_estimate():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(8, 5).double()
    with torch.no_grad():
        layer.weight.mul_(2)
    layer.eval()
    u = layer.u.clone()
    layer(torch.randn(3, 8, dtype=torch.float64))
    assert torch.equal(layer.u, u)
    layer.train()
    layer(torch.randn(3, 8, dtype=torch.float64))
    assert not torch.equal(layer.u, u)


def test_sigma_reparam_gradient_matches_finite_differences():
    """d loss / d (W, gamma, b) by autograd equals central differences, in float64. Eval mode keeps u, v fixed,
    so the loss is one smooth function of the parameters; in training the power-iteration step runs under
    no_grad before sigma = u^T W v, so the gradient there is this one at the updated u, v. The gradient through
    sigma(W) matters: without it (sigma detached) W's gradient is off by far more than the tolerance."""
    torch.manual_seed(0)
    layer = SigmaReparamLinear(8, 5).double()
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn(5, 8, dtype=torch.float64))  # W no longer matches u, v exactly
        layer.gamma.fill_(1.7)
    layer.eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    c = torch.randn(3, 5, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (layer(x).tanh() * c).sum()

    params = {"weight": layer.weight, "gamma": layer.gamma, "bias": layer.bias}
    grads = torch.autograd.grad(loss(), list(params.values()))
    h = 1e-6
    for (name, p), g in zip(params.items(), grads):
        fd = torch.zeros_like(p).reshape(-1)
        for i in range(p.numel()):
            values = []
            for step in (h, -2 * h, h):  # up, down, back
                with torch.no_grad():
                    p.view(-1)[i] += step  # in place on the parameter: its version moves, no stale weight_hat
                values.append(loss().item())
            fd[i] = (values[0] - values[1]) / (2 * h)
        fd = fd.reshape(p.shape)
        assert (g - fd).abs().max().item() <= 1e-6 * max(fd.abs().max().item(), 1.0), name
        assert fd.abs().max().item() > 1e-2, name  # a gradient worth comparing
