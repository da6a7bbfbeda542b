"""The architecture of a TarFlow image model: everything needed to rebuild it."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import check_choices, option
from ..errors import ConfigError


@dataclass
class FlowConfig:
    image_size: int = option(8, "image height and width in pixels (square images)")
    channels: int = option(1, "image channels (1 grey, 3 RGB)")
    patch_size: int = option(2, "patch side p; tokens are p x p x channels, T = (size/p)^2")
    width: int = option(128, "Transformer width (model channels)")
    num_blocks: int = option(4, "number of autoregressive flow blocks (N)")
    layers_per_block: int = option(2, "Transformer layers in each flow block")
    head_dim: int = option(32, "attention head dimension; heads = width / head_dim")
    mlp_ratio: int = option(4, "MLP hidden width as a multiple of width")
    num_classes: int = option(0, "classes for conditioning (0 = unconditional); label num_classes is the null class")
    transform: str = option("affine", "per-token transform: affine z=(x-b)exp(-a), or additive z=x-b "
                            "with a learned prior variance", choices=("affine", "additive"))
    likelihood_prior: str = option("learned", "prior of log p(x) for additive models: learned (N(0, s^2), the one "
                                   "samples are drawn from) or standard (N(0, I): the loss and bits/dim of "
                                   "apple/ml-tarflow); affine models always use N(0, I)",
                                   choices=("learned", "standard"))
    output_norm: str = option("layernorm", "normalisation before each block's output projection: layernorm, or "
                              "none (checkpoints imported from apple/ml-tarflow)", choices=("layernorm", "none"))
    sigma_reparam: bool = option(False, "sigma-Reparam: every linear layer of each block's Transformer (and its input "
                                 "projection) as W_hat = gamma W / sigma(W), one power-iteration step per training "
                                 "step; not the zero-initialised output projection (its sigma would be 0)")
    mixer: str = option("attention", "token mixer of each Transformer layer: causal softmax attention, or the "
                        "Attention Free Transformer with a learned T x T position bias (aft-full), the bias only "
                        "within aft_window positions (aft-local), no bias (aft-simple), or a learned relative kernel "
                        "of aft_window lags (aft-conv)",
                        choices=("attention", "aft-full", "aft-local", "aft-simple", "aft-conv"))
    aft_window: int = option(8, "window in tokens of aft-local and aft-conv (ignored by the other mixers)")
    exclusive_attention: bool = option(False, "Exclusive Self Attention (XSA): remove from each head's output its "
                                       "component along the value of the query's own position (the last visible "
                                       "token), before the output projection; mixer=attention only")

    def __post_init__(self):
        check_choices(self)
        for name in ("image_size", "channels", "patch_size", "width", "num_blocks", "layers_per_block",
                     "head_dim", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be 0 (unconditional) or more, got {self.num_classes}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for name in ("sigma_reparam", "exclusive_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.aft_window < 1:
            raise ConfigError(f"aft_window must be at least 1, got {self.aft_window}")
        if self.exclusive_attention and self.mixer != "attention":
            raise ConfigError(f"exclusive_attention (XSA) needs mixer=attention, got mixer={self.mixer!r}")
        if self.width % self.head_dim:
            raise ConfigError(f"width={self.width} is not divisible by head_dim={self.head_dim}")

    @property
    def num_tokens(self) -> int:
        """T = (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def token_dim(self) -> int:
        """D = channels * patch_size^2."""
        return self.channels * self.patch_size ** 2

    @property
    def num_dims(self) -> int:
        """Dimensions of one image, C H W."""
        return self.channels * self.image_size ** 2
