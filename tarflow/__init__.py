"""tarflow: Transformer autoregressive normalizing flows with exact likelihoods."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, InputError, TarflowError  # noqa: E402
from .flows import FlowConfig, TarFlow  # noqa: E402
from .metrics import bits_per_dim  # noqa: E402
from .sampling import (GSJacobiSampler, Guidance, IterativeDenoiser, JacobiSampler, SequentialSampler,  # noqa: E402
                       tweedie_denoise)

__all__ = ["__version__", "TarFlow", "FlowConfig", "bits_per_dim", "Guidance", "SequentialSampler", "JacobiSampler",
           "GSJacobiSampler", "IterativeDenoiser", "tweedie_denoise", "TarflowError", "ConfigError", "InputError",
           "CheckpointError", "DataError"]
