"""Normalizing Trajectory Models (NTM; Gu et al., Apple 2026): a K-step noising trajectory of an image whose reverse
steps are expressive conditional normalizing flows, trained by the exact log-likelihood of the trajectory.

    q:  x_0 (data) -> x_1 -> ... -> x_K (noise)                      (`noising.NoisingTrajectory`)
    log p(x_{0:K} | y) = log N(x_K; 0, I) + sum_{k=1..K} log p_k(x_{k-1} | x_k, y)
    log p_k(x_{k-1} | x_k, y) = log N(z_k; 0, I) + log|det dz_k / dx_{k-1}|
    z_k = (f(x_{k-1}; c_k) - mu_k) / sigma_k

Step k's flow is the transporter f, a shallow stack of the library's autoregressive flow blocks (alternating orders)
on the tokens of x_{k-1}, then the Gaussian N(mu_k, sigma_k^2) per token value. The blocks read the per-token
features c_k through `Condition.context`; c_k, mu_k and log sigma_k come from the predictor, one deep bidirectional
Transformer that reads the tokens of x_k, the step k and the label y. Blocks and predictor are shared by every step;
when the whole trajectory is known (training, evaluation) the K steps run as one batch of K B rows. At the start f
is the identity and (mu_k, log sigma_k) = (r_k x_k, log s_k), the reverse step of unit-variance Gaussian data.

The bound on the data that follows (Jensen), in nats per image:

    log p(x_0 | y) >= E_q[log p(x_{0:K} | y) - log q(x_{1:K} | x_0)]      (`bound`, one trajectory per call)

so its negative in bits/dim, with the data's bin width, is an upper bound (in expectation over q) on bits/dim.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..modalities import build_modality
from ..nn import TransformerLayer
from .block import ARFlowBlock
from .conditioning import ClassConditioning, Condition
from .config import FlowConfig
from .noising import NoisingTrajectory
from .orders import block_orders
from .priors import StandardNormal
from .saving import load_model, save_model
from .transforms import build_transform

if TYPE_CHECKING:
    from ..sampling.guidance import Guidance

BOUND_NAME = ("trajectory ELBO E_q[log p(x_0:K) - log q(x_1:K | x_0)], one trajectory per image and draw: an upper "
              "bound on bits/dim in expectation")


class TrajectoryPredictor(nn.Module):
    """Step k's conditioning from its noisier image: per-token features c (R, T, W) and the Gaussian (mu, log sigma)
    (R, T, D) of the transporter's output.

    h = proj_in(tokens of x_k) + position + step embedding(k) + class embedding(y); ``predictor_layers``
    bidirectional Transformer layers; c = LayerNorm(h); [mu - r_k x_k | log sigma - log s_k] = Linear(c), whose
    weights start at zero.
    """

    def __init__(self, config: FlowConfig, noising: NoisingTrajectory):
        super().__init__()
        width, token_dim, num_tokens = config.width, config.token_dim, config.num_tokens
        self.proj_in = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.step_embed = nn.Embedding(noising.steps, width)
        nn.init.normal_(self.step_embed.weight, std=0.02)
        self.class_embed = None
        if config.num_classes:
            self.class_embed = nn.Embedding(config.num_classes + 1, width)  # last row: the null class
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(width, config.head_dim, config.mlp_ratio, "attention", num_tokens,
                                                     sigma_reparam=config.sigma_reparam, causal=False,
                                                     dropout=config.dropout)
                                    for _ in range(config.predictor_layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2 * token_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # derived from the config, so not saved: r_k and log s_k of steps 1..K (row k - 1)
        self.register_buffer("ratios", torch.tensor(noising.ratios, dtype=torch.float64), persistent=False)
        self.register_buffer("log_stds", torch.tensor(noising.stds, dtype=torch.float64).log(), persistent=False)

    def forward(self, tokens: Tensor, steps: Tensor, labels: Tensor | None = None, attn_temp: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """tokens of x_k (R, T, D), steps k (R,) in 1..K, labels (R,) or None -> (c, mu, log sigma)."""
        h = self.proj_in(tokens) + self.pos_embed + self.step_embed(steps - 1)[:, None]
        if self.class_embed is not None:
            h = h + self.class_embed(labels)[:, None]
        for layer in self.layers:
            h = layer(h, attn_temp)
        features = self.norm(h)
        mean_offset, log_std_offset = self.head(features).chunk(2, dim=-1)
        ratio = self.ratios[steps - 1].to(tokens.dtype).view(-1, 1, 1)
        log_std = self.log_stds[steps - 1].to(tokens.dtype).view(-1, 1, 1)
        return features, ratio * tokens + mean_offset, log_std + log_std_offset


class NormalizingTrajectoryModel(nn.Module):
    """p(x_{0:K} | y) over the noising trajectory of images (module docstring). ``forward(previous, current, k, y)``
    is step k's flow x_{k-1} -> z_k given x_k; ``inverse`` maps back. Parts: ``modality`` (pixels <-> tokens),
    ``conditioning`` (labels, null class), ``noising`` (q), ``predictor`` and ``blocks`` (the transporter)."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        if config.architecture != "ntm":
            raise ConfigError(f"a Normalizing Trajectory Model needs architecture=ntm, got {config.architecture!r}")
        self.config = config
        self.metadata: dict[str, Any] = {}  # what `save_pretrained` stored beside the architecture
        self.modality = build_modality(config)
        self.conditioning = ClassConditioning(config.num_classes)
        self.noising = NoisingTrajectory(config.signal_levels)
        self.predictor = TrajectoryPredictor(config, self.noising)
        transform = build_transform(config)
        orders = block_orders(config.order, config.num_blocks)
        self.blocks = nn.ModuleList(ARFlowBlock(config, layers, orders[index], transform, conditioned=False,
                                                context_width=config.width)
                                    for index, layers in enumerate(config.block_layers))
        self.prior = StandardNormal()  # of x_K and of every step's z_k

    # ----- inputs ------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """K, the steps of the trajectory."""
        return self.noising.steps

    @property
    def null_class(self) -> int | None:
        return self.conditioning.null_class

    @property
    def device(self) -> torch.device:
        return self.predictor.proj_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (and of the noise samplers draw)."""
        return self.predictor.proj_in.weight.dtype

    def check_labels(self, y: Tensor | None, batch: int) -> Tensor | None:
        return self.conditioning.check(y, batch, self.device)

    def check_step(self, step, batch: int) -> Tensor:
        """Step indices k as a (batch,) long tensor, or an `InputError` for a k outside 1..K."""
        steps = torch.as_tensor(step)
        if steps.dtype.is_floating_point or steps.dtype == torch.bool or steps.dim() > 1:
            raise InputError(f"step must be an integer k in 1..{self.steps} or a ({batch},) tensor of them, got "
                             f"{step!r}")
        steps = steps.to(self.device, torch.long)
        steps = steps.expand(batch) if steps.dim() == 0 else steps
        if steps.shape != (batch,) or batch and not bool(((steps >= 1) & (steps <= self.steps)).all()):
            raise InputError(f"step must be an integer k in 1..{self.steps} (x_k the noisier image of the step) or a "
                             f"({batch},) tensor of them, got {step!r}")
        return steps

    def check_trajectory(self, trajectory: Tensor) -> None:
        """Refuse (InputError) anything but a (B, K + 1, C, H, W) trajectory of finite floats."""
        size, channels = self.config.image_size, self.config.channels
        expected = (self.steps + 1, channels, size, size)
        if not isinstance(trajectory, Tensor) or trajectory.dim() != 5 or tuple(trajectory.shape[1:]) != expected:
            shape = tuple(trajectory.shape) if isinstance(trajectory, Tensor) else type(trajectory).__name__
            raise InputError(f"a trajectory must be (B, {', '.join(map(str, expected))}): x_0 .. x_K along dimension "
                             f"1, got {shape}; draw one from images with model.noising.sample(x)")
        self.modality.check(trajectory[:, 0], "trajectory x_0")
        if not torch.isfinite(trajectory).all():
            raise InputError("the trajectory contains NaN or inf values")

    def patchify(self, x: Tensor) -> Tensor:
        return self.modality.to_tokens(x)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        return self.modality.from_tokens(tokens)

    # ----- one step: x_{k-1} given x_k ---------------------------------------------------------
    def step_flow(self, previous: Tensor, current: Tensor, steps: Tensor, labels: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Tokens of x_{k-1} and x_k (R, T, D), steps k (R,) -> (z_k tokens, log|det dz_k / dx_{k-1}| (R,) nats).
        No input checks."""
        features, mean, log_std = self.predictor(current, steps, labels)
        condition = Condition(context=features)
        tokens = previous
        logdet = previous.new_zeros(previous.shape[0], dtype=torch.promote_types(previous.dtype, torch.float32))
        for block in self.blocks:
            tokens, block_logdet = block(tokens, condition)
            logdet = logdet + block_logdet
        z = (tokens - mean) * torch.exp(-log_std)
        return z, logdet - log_std.sum(dim=(1, 2))

    def forward(self, previous: Tensor, current: Tensor, step, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Step k's flow: x_{k-1} (B, C, H, W) given x_k -> (z_k of the same shape, log|det dz_k / dx_{k-1}| (B,))."""
        self.modality.check(previous, "previous (x_{k-1})")
        self.modality.check(current, "current (x_k)")
        if previous.shape != current.shape:
            raise InputError(f"previous and current must have the same shape, got {tuple(previous.shape)} and "
                             f"{tuple(current.shape)}")
        steps = self.check_step(step, previous.shape[0])
        y = self.check_labels(y, previous.shape[0])
        z, logdet = self.step_flow(self.patchify(previous), self.patchify(current), steps, y)
        return self.unpatchify(z), logdet

    def step_log_prob(self, previous: Tensor, current: Tensor, step, y: Tensor | None = None) -> Tensor:
        """log p_k(x_{k-1} | x_k, y) per sample, nats."""
        z, logdet = self(previous, current, step, y)
        return self.prior.log_prob(self.patchify(z)) + logdet

    @torch.no_grad()
    def invert_step(self, z: Tensor, current: Tensor, steps: Tensor, condition: Condition,
                    guidance: "Guidance | None" = None) -> Tensor:
        """Tokens z_k (B, T, D) given x_k's tokens (B, T, D) -> x_{k-1}'s tokens, exactly: u = mu + sigma z_k, then
        the blocks in reverse, token by token (KV cache). ``condition`` holds the labels and attention temperatures
        of every guidance branch (B or 2 B rows); with ``guidance`` the branches' (log sigma, mu) and each block's
        params are combined by its rule. No input checks."""
        rows = condition.rows(z.shape[0])
        repeat = rows // z.shape[0]
        features, mean, log_std = self.predictor(current.repeat(repeat, 1, 1), steps.repeat(repeat),
                                                 condition.labels, condition.attn_temp)
        if guidance is not None:
            tokens = torch.arange(z.shape[1], device=z.device).view(-1, 1)
            log_std, mean = guidance.combine(log_std, mean, tokens, z.shape[1])
        tokens = mean + torch.exp(log_std) * z
        block_condition = Condition(attn_temp=condition.attn_temp, context=features)
        for block in reversed(self.blocks):
            tokens = block.inverse(tokens, block_condition, guidance)
        return tokens

    def inverse(self, z: Tensor, current: Tensor, step, y: Tensor | None = None) -> Tensor:
        """Step k's inverse: z_k (B, C, H, W) given x_k -> x_{k-1}, exactly (samplers add guidance)."""
        self.modality.check(z, "z")
        self.modality.check(current, "current (x_k)")
        steps = self.check_step(step, z.shape[0])
        condition = Condition(self.check_labels(y, z.shape[0]))
        return self.unpatchify(self.invert_step(self.patchify(z), self.patchify(current), steps, condition))

    # ----- the trajectory ----------------------------------------------------------------------
    def trajectory_log_prob(self, trajectory: Tensor, y: Tensor | None = None, validate: bool = True) -> Tensor:
        """log p(x_{0:K} | y) per sample (B,), nats: log N(x_K; 0, I) plus every step's log p_k, the K steps as one
        batch of K B rows. ``validate=False`` skips the input checks (for the trainer, which checks its batches)."""
        if validate:
            self.check_trajectory(trajectory)
            y = self.check_labels(y, trajectory.shape[0])
        batch, steps = trajectory.shape[0], self.steps
        by_step = trajectory.transpose(0, 1)  # (K + 1, B, C, H, W)
        previous = self.patchify(by_step[:-1].flatten(0, 1))  # x_0 .. x_{K-1}, step-major rows
        current = self.patchify(by_step[1:].flatten(0, 1))  # x_1 .. x_K
        step_index = torch.arange(1, steps + 1, device=trajectory.device).repeat_interleave(batch)
        labels = None if y is None else y.repeat(steps)
        z, logdet = self.step_flow(previous, current, step_index, labels)
        per_step = (self.prior.log_prob(z) + logdet).view(steps, batch)
        return self.prior.log_prob(self.patchify(by_step[-1])) + per_step.sum(0)

    def bound(self, trajectory: Tensor, y: Tensor | None = None, validate: bool = True) -> Tensor:
        """log p(x_{0:K} | y) - log q(x_{1:K} | x_0) per sample (B,), nats: a one-trajectory estimate of the bound on
        log p(x_0 | y) (module docstring). Its negative per dimension is the training loss."""
        return self.trajectory_log_prob(trajectory, y, validate) - self.noising.log_prob(trajectory)

    def elbo(self, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """`bound` of images x (B, C, H, W) with one trajectory drawn from q (``generator``), nats per image."""
        self.modality.check(x)
        return self.bound(self.noising.sample(x, generator), y)

    # ----- save / load -------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (architecture, library version, metadata) and ``model.safetensors``, atomically."""
        return save_model(self, path, metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu"
                        ) -> "NormalizingTrajectoryModel":
        """Rebuild a model from a `save_pretrained` directory, in eval mode; no architecture arguments needed."""
        return load_model(cls, path, map_location)
