"""Named run configs. `tarflow train --preset NAME` starts from one; any field can be overridden."""

from __future__ import annotations

from .errors import ConfigError
from .train.config import RunConfig

PRESETS: dict[str, dict] = {
    # The default: class-conditional TarFlow on scikit-learn's 8x8 digits, a few minutes on 2 CPU cores.
    "digits": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=128, num_blocks=4, layers_per_block=2,
                      head_dim=32, num_classes=10),
        "train": dict(dataset="digits", steps=1200, batch_size=64, lr=2e-3, warmup_steps=100, eval_every=300,
                      sample_every=300, checkpoint_every=300, sample_guidance=1.0, sample_temperature=0.9),
    },
    # Seconds on a CPU: for smoke tests of the whole pipeline, not for results.
    "tiny": {
        "model": dict(image_size=8, channels=1, patch_size=2, width=32, num_blocks=2, layers_per_block=1,
                      head_dim=16, num_classes=10),
        "train": dict(dataset="digits", steps=40, batch_size=64, lr=2e-3, warmup_steps=5, log_every=10,
                      eval_every=20, sample_every=20, checkpoint_every=20, num_samples=20),
    },
}

DEFAULT_PRESET = "digits"


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    return RunConfig.from_dict(PRESETS[name])
